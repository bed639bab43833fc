//! Turns a [`RawWorkflow`] into a validated [`Workflow`], finding every
//! problem at once.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::compile_dag::dag_before;
use super::ctx::{Ctx, END, concurrency, duration, valid_ident, valid_step_id};
use super::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use super::raw::{RawStep, RawWorkflow};
use crate::expr::Condition;
use crate::model::{Block, RetryPolicy, Step, StepKind, Target, Workflow};
use crate::template;

/// The largest `maxItems` of the arrays a JSON Schema describes; `None` when
/// an array has no `maxItems` (its length is unbounded).
fn max_items(schema: &serde_json::Value) -> Option<u64> {
    use serde_json::Value;
    let mut most = 0u64;
    let Value::Object(o) = schema else { return Some(0) };
    let is_array =
        o.get("type").is_some_and(|t| t == "array" || t.as_array().is_some_and(|a| a.iter().any(|x| x == "array")))
            || o.contains_key("items");
    if is_array {
        most = o.get("maxItems").and_then(Value::as_u64)?;
    }
    for (k, v) in o {
        let sub = match (k.as_str(), v) {
            ("properties" | "patternProperties" | "$defs" | "definitions", Value::Object(m)) => {
                m.values().map(max_items).try_fold(0u64, |a, b| b.map(|b| a.max(b)))?
            }
            ("items" | "additionalProperties" | "contains" | "not", v) => max_items(v)?,
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(a)) => {
                a.iter().map(max_items).try_fold(0u64, |acc, b| b.map(|b| acc.max(b)))?
            }
            _ => 0,
        };
        most = most.max(sub);
    }
    Some(most)
}

/// Every step in `steps`, nested ones included, in file order.
fn walk_raw<'a>(steps: &'a [RawStep], out: &mut Vec<&'a RawStep>) {
    for s in steps {
        out.push(s);
        if let Some(p) = &s.parallel {
            for b in &p.branches {
                walk_raw(&b.steps, out);
            }
        }
        if let Some(m) = &s.map {
            walk_raw(&m.steps, out);
        }
        if let Some(d) = &s.dag {
            walk_raw(&d.steps, out);
        }
    }
}

/// Compiles a parsed file. `tasks` are the task handler names available.
pub fn compile(raw: RawWorkflow, source: &str, file: &str, tasks: &[&str]) -> Result<Workflow, Diagnostics> {
    let mut every: Vec<&RawStep> = Vec::new();
    walk_raw(&raw.steps, &mut every);
    let nested_and_top = every.len();
    walk_raw(&raw.compensations, &mut every);
    let all_ids: Vec<&str> = every.iter().map(|s| s.id.value.as_str()).collect();
    let max_input_items = raw.inputs.as_ref().and_then(|i| max_items(&i.value));
    let mut cx =
        Ctx { file, diags: Vec::new(), all_ids, tasks, children: Vec::new(), models: Vec::new(), max_input_items };
    if !valid_ident(&raw.name.value) {
        cx.at(
            &raw.name,
            "bad-name",
            format!("workflow name `{}` is not valid", raw.name.value),
            Some("use 1 to 64 letters, digits, `-` or `_`, starting with a letter".into()),
        );
    }
    if raw.steps.is_empty() {
        cx.at(
            &raw.name,
            "no-steps",
            "the workflow has no steps".into(),
            Some("add at least one step under `steps:`".into()),
        );
    }
    if let Some(schema) = &raw.inputs
        && schema.value.is_object()
        && let Err(e) = crate::contract::check_schema(&schema.value)
    {
        cx.at(schema, "bad-schema", format!("`inputs` is not a valid JSON Schema: {e}"), None);
    }
    if let Some(schema) = &raw.inputs
        && !schema.value.is_object()
    {
        cx.at(
            schema,
            "bad-schema",
            "`inputs` must be a JSON Schema object".into(),
            Some("for example `inputs: { type: object, properties: { topic: { type: string } } }`".into()),
        );
    }

    // Ids: valid and unique.
    let mut seen: HashMap<&str, &Spanned<String>> = HashMap::new();
    for s in every.iter().copied() {
        let id = s.id.value.as_str();
        if !valid_step_id(id) || id == END {
            let hint =
                if id.contains('-') { format!("; `{}` would work", id.replace('-', "_")) } else { String::new() };
            cx.at(
                &s.id,
                "bad-step-id",
                format!("step id `{id}` is not valid"),
                Some(format!(
                    "use 1 to 64 letters, digits or `_`, starting with a letter, so templates can say `steps.ID` (`-` reads as minus; `end` is reserved){hint}"
                )),
            );
        }
        if let Some(first) = seen.get(id) {
            let line = first.referenced.line();
            cx.at(
                &s.id,
                "duplicate-step",
                format!("step id `{id}` is already used on line {line}"),
                Some("give each step its own id".into()),
            );
        } else {
            seen.insert(id, &s.id);
        }
    }
    let comp_ids: Vec<&str> = raw.compensations.iter().map(|s| s.id.value.as_str()).collect();
    for s in every[..nested_and_top].iter().copied() {
        if let Some(c) = &s.compensate
            && !comp_ids.contains(&c.value.as_str())
        {
            let help = match did_you_mean(&c.value, comp_ids.iter().copied()) {
                Some(d) => format!("did you mean `{d}`?"),
                None => "list the compensating step under `compensations:`".to_owned(),
            };
            cx.at(c, "unknown-compensation", format!("no compensation step `{}`", c.value), Some(help));
        }
    }
    let mut compensations = Vec::new();
    for s in &raw.compensations {
        let jumps = s.branch.is_some()
            || s.when.is_some()
            || !s.catch.is_empty()
            || s.fail.is_some()
            || s.switch.is_some()
            || s.wait.is_some()
            || s.next.is_some()
            || s.end
            || s.compensate.is_some()
            || s.parallel.is_some()
            || s.map.is_some()
            || s.dag.is_some()
            || !s.depends_on.is_empty()
            || s.workflow.is_some()
            || s.ai.is_some()
            || s.form.is_some()
            || s.approval.is_some();
        if jumps {
            cx.at(
                &s.id,
                "bad-compensation",
                format!("compensation `{}` may only do work: a `task`, `transform` or `http`", s.id.value),
                Some(
                    "remove `branch`, `switch`, `wait`, `parallel`, `map`, `dag`, `depends_on`, `workflow`, `ai`, `form`, `approval`, `fail`, `next`, `end`, `when`, `catch` and `compensate` from it"
                        .into(),
                ),
            );
        }
        if let Some(step) = compile_step(&mut cx, s, Target::End, &comp_ids, false) {
            compensations.push(step);
        }
    }

    let steps = compile_block(&mut cx, &raw.steps, false);

    let mut secret_refs = Vec::new();
    for rs in every.iter().copied() {
        let mut texts: Vec<String> = Vec::new();
        let mut push = |v: &Value| {
            let _ = template::walk_strings::<()>(v, &mut |t| {
                texts.push(t.to_owned());
                Ok(())
            });
        };
        for v in [&rs.with_input, &rs.transform].into_iter().flatten() {
            push(v);
        }
        if let Some(m) = &rs.map {
            push(&m.items);
        }
        if let Some(i) = rs.workflow.as_ref().and_then(|c| c.inputs.as_ref()) {
            push(i);
        }
        if let Some(h) = &rs.http {
            for v in [Some(&h.url), h.headers.as_ref(), h.query.as_ref(), h.body.as_ref()].into_iter().flatten() {
                push(v);
            }
        }
        if let Some(u) = rs.wait.as_ref().and_then(|w| w.until.as_ref()) {
            push(u);
        }
        if let (Some(q), Some(v)) = (&rs.queue, &rs.with_input) {
            let mut passed = false;
            let _ = template::walk_strings::<()>(v, &mut |t| {
                passed |= !secret_names(t).is_empty();
                Ok(())
            });
            if passed {
                cx.at(
                    q,
                    "secret-to-queue",
                    format!(
                        "step `{}` passes a secret to the workers of queue `{}`, outside this process",
                        rs.id.value, q.value
                    ),
                    Some("let the worker read the secret from its own environment; pass secrets only to `task` and `http` steps".into()),
                );
            }
        }
        for v in super::compile_people::texts(rs) {
            let mut shown = false;
            let _ = template::walk_strings::<()>(&v, &mut |t| {
                shown |= !secret_names(t).is_empty();
                Ok(())
            });
            if shown {
                cx.at(
                    &rs.id,
                    "secret-in-prompt",
                    format!(
                        "step `{}` uses a secret in what it shows a model or a person, which is recorded",
                        rs.id.value
                    ),
                    Some("pass secrets only to `task` and `http` steps".into()),
                );
            }
        }
        for t in texts {
            if let Some(bad) = transformed_secret(&t) {
                cx.at(
                    &rs.id,
                    "secret-transformed",
                    format!(
                        "step `{}` transforms a secret (`{bad}`); a secret is kept out of the log only as it is, so \
                         a changed form (upper-cased, reversed, sliced, joined) could be recorded",
                        rs.id.value
                    ),
                    Some("use `{{ secrets.NAME }}` as it is (inside other text is fine); transform it in the service or store the form you need as its own secret".into()),
                );
            }
            for name in secret_names(&t) {
                secret_refs.push(crate::model::SecretRef {
                    name,
                    line: rs.id.referenced.line(),
                    column: rs.id.referenced.column(),
                });
            }
        }
    }
    if let Some(out) = &raw.output {
        let _ = template::walk_strings::<()>(&out.value, &mut |t| {
            if !secret_names(t).is_empty() {
                cx.at(
                    out,
                    "secret-in-output",
                    "the workflow output uses a secret; outputs are recorded and shown".into(),
                    Some("pass secrets only to steps that need them".into()),
                );
            }
            Ok(())
        });
    }
    let mut children = std::mem::take(&mut cx.children);
    children.sort();
    children.dedup();
    let budget = super::compile_people::budget(&mut cx, &raw.name, raw.budget.as_ref());
    let hooks = hooks(&mut cx, raw.on.as_ref(), &mut secret_refs);
    let model_refs = std::mem::take(&mut cx.models);
    let mut workflow = Workflow {
        budget,
        hooks,
        model_refs,
        config: Default::default(),
        compensations,
        secret_refs,
        children,
        index: HashMap::new(),
        name: raw.name.value.clone(),
        description: raw.description.clone(),
        inputs_schema: raw.inputs.as_ref().map(|i| i.value.clone()),
        steps,
        output: raw.output.as_ref().map(|o| o.value.clone()),
        source: source.to_owned(),
        definition_hash: hex::encode(Sha256::digest(source.as_bytes())),
    };
    workflow.build_index();
    if let Some(out) = &raw.output
        && let Err(e) = template::check(&out.value)
    {
        cx.at(out, "bad-template", format!("workflow output: {e}"), None);
    }

    if cx.diags.is_empty() {
        check_graph(&mut cx, &raw, &workflow);
    }
    if cx.diags.is_empty() {
        return Ok(workflow);
    }
    // In file order, as a person reads them.
    cx.diags.sort_by_key(|d| (d.line, d.column));
    Err(Diagnostics(cx.diags))
}

fn compile_block(cx: &mut Ctx<'_>, raw_steps: &[RawStep], in_map: bool) -> Vec<Step> {
    let ids: Vec<&str> = raw_steps.iter().map(|s| s.id.value.as_str()).collect();
    let mut steps = Vec::new();
    for (i, s) in raw_steps.iter().enumerate() {
        if let Some(d) = s.depends_on.first() {
            cx.at(
                d,
                "misplaced-field",
                format!("step `{}` has `depends_on`, which only a step of a `dag` takes", s.id.value),
                Some("steps of a sequence run in listed order (or where `next` and branches send control); to start steps as their dependencies complete, list them under `dag: { steps: [...] }`".into()),
            );
        }
        let following = match ids.get(i + 1) {
            Some(n) => Target::Step((*n).to_owned()),
            None => Target::End,
        };
        if let Some(step) = compile_step(cx, s, following, &ids, in_map) {
            steps.push(step);
        }
    }
    steps
}

fn target(cx: &mut Ctx<'_>, span: &Spanned<String>, ids: &[&str]) -> Option<Target> {
    let name = span.value.as_str();
    if name == END {
        return Some(Target::End);
    }
    if ids.contains(&name) {
        return Some(Target::Step(name.to_owned()));
    }
    if cx.all_ids.contains(&name) {
        cx.at(
            span,
            "jump-across-blocks",
            format!("step `{name}` is not in the same sequence of steps as this jump"),
            Some("jumps stay inside the steps they are listed with: a parallel branch, a map body or the top-level steps; `end` ends that sequence".into()),
        );
        return None;
    }
    let help = match did_you_mean(name, ids.iter().copied().chain([END])) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("known steps: {}; or `end`", ids.join(", ")),
    };
    cx.at(span, "unknown-step", format!("no step with id `{name}`"), Some(help));
    None
}

fn condition(cx: &mut Ctx<'_>, span: &Spanned<String>) -> Option<Condition> {
    match Condition::compile(&span.value) {
        // Its cost, estimated where the inputs bound it: a condition over the
        // inputs alone visits at most their longest list to the power of
        // its nested comprehensions.
        Ok(c) if c.loops() > 0 && c.reads_only(&["inputs"]) && cx.max_input_items.is_some() => {
            let n = cx.max_input_items.unwrap_or(0);
            let cost = n.saturating_pow(c.loops());
            if cost > crate::expr::MAX_COST {
                cx.at(
                    span,
                    "condition-too-costly",
                    format!(
                        "condition `{}` nests {} comprehensions over input lists of up to {n} items (their `maxItems`): up to {cost} evaluations, over the limit of {}",
                        span.value,
                        c.loops(),
                        crate::expr::MAX_COST
                    ),
                    Some("lower `maxItems`, nest fewer `all`/`exists`/`map`/`filter`, or filter the data first in a `transform` or a task".into()),
                );
                return None;
            }
            Some(c)
        }
        Ok(c) => Some(c),
        Err(e) => {
            cx.at(
                span,
                "bad-expression",
                format!("condition `{}` does not parse: {e}", span.value),
                Some("conditions use CEL: `inputs.count > 3 && steps.check.output.ok`".into()),
            );
            None
        }
    }
}

/// A task queue's name: what workers poll, in URLs and logs.
pub fn valid_queue_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 100
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

fn compile_step(cx: &mut Ctx<'_>, s: &RawStep, following: Target, ids: &[&str], in_map: bool) -> Option<Step> {
    let id = s.id.value.clone();
    let tasks = cx.tasks;
    let kinds: Vec<&str> = [
        s.task.as_ref().map(|_| "task"),
        s.queue.as_ref().map(|_| "queue"),
        s.transform.as_ref().map(|_| "transform"),
        s.branch.as_ref().map(|_| "branch"),
        s.switch.as_ref().map(|_| "switch"),
        s.wait.as_ref().map(|_| "wait"),
        s.http.as_ref().map(|_| "http"),
        s.parallel.as_ref().map(|_| "parallel"),
        s.map.as_ref().map(|_| "map"),
        s.dag.as_ref().map(|_| "dag"),
        s.workflow.as_ref().map(|_| "workflow"),
        s.ai.as_ref().map(|_| "ai"),
        s.form.as_ref().map(|_| "form"),
        s.approval.as_ref().map(|_| "approval"),
        s.fail.as_ref().map(|_| "fail"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if kinds.len() != 1 {
        let message = if kinds.is_empty() {
            format!("step `{id}` does not say what it does")
        } else {
            format!("step `{id}` has {}; a step does one thing", kinds.join(" and "))
        };
        cx.at(
            &s.id,
            "step-kind",
            message,
            Some(
                "give it exactly one of `task`, `queue`, `transform`, `branch`, `switch`, `wait`, `http`, `parallel`, `map`, `dag`, `workflow`, `ai`, `form`, `approval` or `fail`"
                    .into(),
            ),
        );
        return None;
    }
    if s.with_input.is_some() && s.task.is_none() && s.queue.is_none() {
        cx.at(
            &s.id,
            "misplaced-field",
            format!("step `{id}` has `with`, which only a `task` or `queue` step takes"),
            Some("remove `with`, or make the step a task".into()),
        );
    }
    if let (Some(h), None) = (&s.heartbeat_timeout, &s.queue) {
        cx.at(
            h,
            "misplaced-field",
            format!("step `{id}` has `heartbeat_timeout`, which only a `queue` step takes"),
            Some("remove `heartbeat_timeout` (use `timeout` to bound an attempt)".into()),
        );
    }
    let jumps = s.branch.is_some() || s.switch.is_some();
    if jumps && (s.next.is_some() || s.end) {
        cx.at(
            &s.id,
            "misplaced-field",
            format!("step `{id}` is a {} and also has `next` or `end`", kinds[0]),
            Some("a branch or switch chooses its own target; remove `next`/`end`".into()),
        );
    }
    if s.next.is_some() && s.end {
        cx.at(
            &s.id,
            "misplaced-field",
            format!("step `{id}` has both `next` and `end: true`"),
            Some("keep one".into()),
        );
    }
    for (what, v) in [("with", &s.with_input), ("transform", &s.transform)] {
        if let Some(v) = v
            && let Err(e) = template::check(v)
        {
            cx.at(&s.id, "bad-template", format!("step `{id}` `{what}`: {e}"), None);
        }
    }
    if in_map && let Some(c) = &s.compensate {
        cx.at(
            c,
            "misplaced-field",
            format!("step `{id}` is inside a `map` and has `compensate`"),
            Some("compensate the `map` step as a whole instead: give it `compensate`".into()),
        );
    }
    if let (Some(t), true) = (
        &s.timeout,
        s.parallel.is_some()
            || s.map.is_some()
            || s.dag.is_some()
            || s.workflow.is_some()
            || s.form.is_some()
            || s.approval.is_some(),
    ) {
        cx.at(
            t,
            "misplaced-field",
            format!("step `{id}` is a {} and has `timeout`, which bounds one attempt of a task or HTTP call", kinds[0]),
            Some(
                "put `timeout` on the steps inside it (or in the child workflow); a form or approval takes `deadline`"
                    .into(),
            ),
        );
    }
    if s.budget.is_some() && s.ai.is_none() {
        cx.at(
            &s.id,
            "misplaced-field",
            format!("step `{id}` has `budget`, which only an `ai` step (or the workflow) takes"),
            Some("move `budget` to the ai step, or to the top of the file for the whole run".into()),
        );
    }
    if s.output_contract.is_some() && (s.form.is_some() || s.approval.is_some()) {
        cx.at(
            &s.id,
            "misplaced-field",
            format!(
                "step `{id}` is a {} and has `output_contract`; its output is defined by its {}",
                kinds[0],
                if s.form.is_some() { "fields" } else { "decision" }
            ),
            Some("remove `output_contract`".into()),
        );
    }
    let then = match (&s.next, s.end) {
        (_, true) => Some(Target::End),
        (Some(n), false) => target(cx, n, ids),
        (None, false) => Some(following.clone()),
    };

    let kind = if let Some(handler) = &s.task {
        if !tasks.contains(&handler.value.as_str()) {
            let help = match did_you_mean(&handler.value, tasks.iter().copied()) {
                Some(t) => format!("did you mean `{t}`?"),
                None => format!("available task handlers: {}", tasks.join(", ")),
            };
            cx.at(handler, "unknown-task", format!("no task handler named `{}`", handler.value), Some(help));
        }
        Some(StepKind::Task { handler: handler.value.clone(), input: s.with_input.clone().unwrap_or(Value::Null) })
    } else if let Some(q) = &s.queue {
        if !valid_queue_name(&q.value) {
            cx.at(
                q,
                "bad-queue-name",
                format!("`{}` is not a queue name", q.value),
                Some("use 1 to 100 letters, digits, `_`, `-`, `.` or `:`, starting with a letter or digit".into()),
            );
        }
        let heartbeat_timeout = match &s.heartbeat_timeout {
            Some(h) => match duration(cx, h) {
                Some(d) if d < std::time::Duration::from_secs(1) => {
                    cx.at(
                        h,
                        "bad-heartbeat-timeout",
                        format!("step `{id}`: `heartbeat_timeout` {} is under a second", h.value),
                        Some("give workers at least `1s` between heartbeats (they beat at a third of it)".into()),
                    );
                    crate::model::DEFAULT_HEARTBEAT_TIMEOUT
                }
                Some(d) => d,
                None => crate::model::DEFAULT_HEARTBEAT_TIMEOUT,
            },
            None => crate::model::DEFAULT_HEARTBEAT_TIMEOUT,
        };
        if let Err(e) = template::check(&s.with_input.clone().unwrap_or(Value::Null)) {
            cx.at(&s.id, "bad-template", format!("step `{id}` `with`: {e}"), None);
        }
        Some(StepKind::Queue {
            queue: q.value.clone(),
            input: s.with_input.clone().unwrap_or(Value::Null),
            heartbeat_timeout,
        })
    } else if let Some(t) = &s.transform {
        Some(StepKind::Transform { output: t.clone() })
    } else if let Some(b) = &s.branch {
        let c = condition(cx, &b.condition);
        let t = target(cx, &b.then, ids);
        let o = match &b.otherwise {
            Some(o) => target(cx, o, ids),
            None => Some(following.clone()),
        };
        match (c, t, o) {
            (Some(condition), Some(then), Some(otherwise)) => Some(StepKind::Branch { condition, then, otherwise }),
            _ => None,
        }
    } else if let Some(sw) = &s.switch {
        if sw.cases.is_empty() {
            cx.at(
                &s.id,
                "empty-switch",
                format!("switch `{id}` has no cases"),
                Some("add `cases: [{ when: ..., goto: ... }]`".into()),
            );
        }
        let mut cases = Vec::new();
        let mut ok = true;
        for c in &sw.cases {
            match (condition(cx, &c.when), target(cx, &c.goto, ids)) {
                (Some(cond), Some(t)) => cases.push((cond, t)),
                _ => ok = false,
            }
        }
        let default = match &sw.default {
            Some(d) => target(cx, d, ids),
            None => Some(following.clone()),
        };
        match (ok, default) {
            (true, Some(default)) => Some(StepKind::Switch { cases, default }),
            _ => None,
        }
    } else if let Some(h) = &s.http {
        let mut request = serde_json::Map::new();
        if let Some(m) = &h.method {
            let up = m.value.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].contains(&up.as_str()) {
                cx.at(
                    m,
                    "bad-method",
                    format!("`{}` is not an HTTP method Cairn sends", m.value),
                    Some("use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS".into()),
                );
            }
            request.insert("method".into(), Value::String(up));
        }
        request.insert("url".into(), h.url.clone());
        for (k, v) in [("headers", &h.headers), ("query", &h.query), ("body", &h.body)] {
            if let Some(v) = v {
                if k != "body" && !v.is_object() {
                    cx.at(&s.id, "bad-http", format!("step `{id}`: `{k}` must be a map of names to values"), None);
                }
                request.insert(k.into(), v.clone());
            }
        }
        let request = Value::Object(request);
        if let Err(e) = template::check(&request) {
            cx.at(&s.id, "bad-template", format!("step `{id}` `http`: {e}"), None);
        }
        let timeout = h.timeout.as_ref().and_then(|t| duration(cx, t)).unwrap_or(crate::model::DEFAULT_HTTP_TIMEOUT);
        // RFC 9110: GET, HEAD, OPTIONS, PUT and DELETE may be repeated.
        let method = h.method.as_ref().map_or("GET".to_owned(), |m| m.value.to_ascii_uppercase());
        let idempotent = h.idempotent.unwrap_or(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].contains(&method.as_str()));
        Some(StepKind::Http { request, timeout, retry_on_status: h.retry_on_status.clone(), idempotent })
    } else if let Some(wt) = &s.wait {
        let duration = wt.duration.as_ref().and_then(|d| duration(cx, d));
        match (&wt.duration, &wt.until) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => cx.at(
                &s.id,
                "bad-wait",
                format!("wait `{id}` needs exactly one of `for` and `until`"),
                Some("`wait: { for: 30s }` or `wait: { until: \"2026-12-01T09:00:00Z\" }`".into()),
            ),
        }
        if let Some(u) = &wt.until {
            match u {
                Value::String(text) if text.contains("{{") => {
                    if let Err(e) = template::check(u) {
                        cx.at(&s.id, "bad-template", format!("wait `{id}` `until`: {e}"), None);
                    }
                }
                Value::String(text) if chrono::DateTime::parse_from_rfc3339(text).is_err() => cx.at(
                    &s.id,
                    "bad-instant",
                    format!("wait `{id}`: `{text}` is not an RFC 3339 instant"),
                    Some("write e.g. `2026-12-01T09:00:00Z`".into()),
                ),
                Value::String(_) => {}
                _ => cx.at(&s.id, "bad-instant", format!("wait `{id}`: `until` must be a string"), None),
            }
        }
        Some(StepKind::Wait { duration, until: wt.until.clone() })
    } else if let Some(p) = &s.parallel {
        if p.branches.is_empty() {
            cx.at(
                &s.id,
                "empty-parallel",
                format!("parallel `{id}` has no branches"),
                Some("add `branches: [{ name: a, steps: [...] }, ...]`".into()),
            );
        }
        let mut names: HashMap<&str, u64> = HashMap::new();
        let mut branches = Vec::new();
        let mut ok = true;
        for b in &p.branches {
            let name = b.name.value.as_str();
            if !valid_step_id(name) {
                cx.at(
                    &b.name,
                    "bad-branch-name",
                    format!("branch name `{name}` is not valid"),
                    Some("use letters, digits or `_`, starting with a letter: it is a key of the step's output".into()),
                );
            }
            if let Some(line) = names.insert(name, b.name.referenced.line()) {
                cx.at(
                    &b.name,
                    "duplicate-branch",
                    format!("parallel `{id}` already has a branch `{name}` (line {line})"),
                    Some("give each branch its own name".into()),
                );
            }
            if b.steps.is_empty() {
                cx.at(&b.name, "empty-branch", format!("branch `{name}` has no steps"), None);
            }
            let inner = compile_block(cx, &b.steps, in_map);
            ok &= inner.len() == b.steps.len();
            branches.push((name.to_owned(), inner));
        }
        concurrency(cx, s, p.max_concurrency);
        let as_list = match p.output.as_ref().map(|o| o.value.as_str()) {
            None | Some("by_branch") => false,
            Some("list") => true,
            Some(other) => {
                let o = p.output.as_ref().map_or(&s.id, |o| o);
                cx.at(
                    o,
                    "bad-parallel-output",
                    format!("parallel `{id}`: `output: {other}` is not a shape its output takes"),
                    Some(
                        "`by_branch` (an object keyed by branch name, the default) or `list` (in listed order)".into(),
                    ),
                );
                false
            }
        };
        if as_list && p.compete {
            cx.at(
                p.output.as_ref().map_or(&s.id, |o| o),
                "misplaced-field",
                format!("parallel `{id}` is a race and has `output: list`; a race's output is its winner's"),
                Some("remove `output`, or `compete`".into()),
            );
        }
        ok.then(|| StepKind::Parallel {
            branches,
            fail_fast: p.fail_fast.unwrap_or(true),
            max_concurrency: p.max_concurrency,
            compete: p.compete,
            as_list,
        })
    } else if let Some(m) = &s.map {
        match &m.items {
            Value::String(t) if t.contains("{{") => {
                if let Err(e) = template::check(&m.items) {
                    cx.at(&s.id, "bad-template", format!("map `{id}` `items`: {e}"), None);
                }
            }
            Value::Array(_) => {}
            other => cx.at(
                &s.id,
                "bad-items",
                format!("map `{id}`: `items` is {other}, not a list or a template that renders to one"),
                Some("write e.g. `items: \"{{ inputs.orders }}\"` or `items: [1, 2, 3]`".into()),
            ),
        }
        if m.steps.is_empty() {
            cx.at(
                &s.id,
                "empty-map",
                format!("map `{id}` has no steps"),
                Some("list the steps each item runs through under `steps:`".into()),
            );
        }
        concurrency(cx, s, m.max_concurrency);
        let inner = compile_block(cx, &m.steps, true);
        (inner.len() == m.steps.len()).then(|| StepKind::Map {
            items: m.items.clone(),
            steps: inner,
            max_concurrency: m.max_concurrency,
            fail_fast: m.fail_fast.unwrap_or(true),
        })
    } else if let Some(d) = &s.dag {
        super::compile_dag::dag(cx, s, d, in_map, compile_step)
    } else if let Some(c) = &s.workflow {
        if !valid_ident(&c.name.value) {
            cx.at(&c.name, "bad-name", format!("`{}` is not a workflow name", c.name.value), None);
        }
        if c.version == Some(0) {
            cx.at(
                &s.id,
                "bad-version",
                format!("step `{id}`: versions start at 1"),
                Some("omit `version` to run the latest".into()),
            );
        }
        let inputs = c.inputs.clone().unwrap_or_else(|| Value::Object(Default::default()));
        if let Err(e) = template::check(&inputs) {
            cx.at(&s.id, "bad-template", format!("step `{id}` `workflow.inputs`: {e}"), None);
        }
        cx.children.push(c.name.value.clone());
        Some(StepKind::Workflow { name: c.name.value.clone(), version: c.version, inputs })
    } else if let Some(a) = &s.ai {
        super::compile_people::ai(cx, &s.id, a, s.output_contract.as_ref())
    } else if let Some(f) = &s.form {
        super::compile_people::form(cx, &s.id, f)
    } else if let Some(a) = &s.approval {
        super::compile_people::approval(cx, &s.id, a)
    } else if let Some(f) = &s.fail {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if f.error.value.is_empty() || !f.error.value.chars().all(ok) {
            cx.at(
                &f.error,
                "bad-error-kind",
                format!("step `{id}`: `{}` is not an error kind", f.error.value),
                Some("use letters, digits, `_`, `-` and `.`, e.g. `payment.declined`".into()),
            );
        }
        let cause = f.cause.clone().unwrap_or_else(|| Value::String(String::new()));
        if let Err(e) = template::check(&cause) {
            cx.at(&s.id, "bad-template", format!("step `{id}` `fail.cause`: {e}"), None);
        }
        if s.next.is_some() || s.end || !s.catch.is_empty() || s.retry.is_some() {
            cx.at(
                &s.id,
                "misplaced-field",
                format!("step `{id}` is a `fail` step and has `next`, `end`, `catch` or `retry`"),
                Some("a fail step ends its run (or branch) with its error: remove them, and catch the error on the step that holds it (a parallel or map) or let it fail the run".into()),
            );
        }
        Some(StepKind::Fail { error: f.error.value.clone(), cause })
    } else {
        None
    };
    let mut catch = Vec::new();
    for c in &s.catch {
        for e in &c.errors {
            error_pattern(cx, e);
        }
        if let Some(next) = target(cx, &c.next, ids) {
            catch.push(crate::model::Catcher { errors: c.errors.iter().map(|e| e.value.clone()).collect(), next });
        }
    }

    let mut retry = Vec::new();
    let raw_retriers = s.retry.as_deref().unwrap_or_default();
    for (i, r) in raw_retriers.iter().enumerate() {
        let mut p = RetryPolicy { max_attempts: r.max_attempts.unwrap_or(3), ..RetryPolicy::default() };
        if p.max_attempts == 0 {
            cx.at(
                &s.id,
                "bad-retry",
                format!("step `{id}`: `max_attempts` must be at least 1"),
                Some("1 means no retry".into()),
            );
        }
        if let Some(d) = r.initial_interval.as_ref().and_then(|d| duration(cx, d)) {
            p.initial_interval = d;
        }
        if let Some(d) = r.max_interval.as_ref().and_then(|d| duration(cx, d)) {
            p.max_interval = d;
        }
        p.max_duration = r.max_duration.as_ref().and_then(|d| duration(cx, d));
        if let Some(c) = r.backoff_coefficient {
            if !(1.0..=100.0).contains(&c) {
                cx.at(&s.id, "bad-retry", format!("step `{id}`: `backoff_coefficient` {c} is outside 1 to 100"), None);
            }
            p.backoff_coefficient = c;
        }
        if let Some(j) = r.jitter {
            if !(0.0..=1.0).contains(&j) {
                cx.at(&s.id, "bad-retry", format!("step `{id}`: `jitter` {j} is outside 0 to 1"), None);
            }
            p.jitter = j;
        }
        for e in &r.errors {
            error_pattern(cx, e);
        }
        p.errors = r.errors.iter().map(|e| e.value.clone()).collect();
        p.non_retryable = r.non_retryable.clone();
        // A retrier for every error before others leaves them nothing.
        if (p.errors.is_empty() || p.errors.iter().any(|e| e == "*"))
            && let Some(later) = raw_retriers.get(i + 1)
        {
            let at = later.errors.first().unwrap_or(&s.id);
            cx.at(
                at,
                "unreachable-retrier",
                format!("step `{id}`: retrier {} never applies: retrier {} handles every error", i + 2, i + 1),
                Some("list the retriers for particular errors first and the one for any error (no `errors`, or `*`) last".into()),
            );
        }
        retry.push(p);
    }
    let timeout = s.timeout.as_ref().and_then(|t| duration(cx, t));
    if s.max_visits == Some(0) {
        cx.at(&s.id, "bad-max-visits", format!("step `{id}`: `max_visits` must be at least 1"), None);
    }
    if let Some(c) = &s.output_contract
        && c.is_object()
        && let Err(e) = crate::contract::check_schema(c)
    {
        cx.at(&s.id, "bad-schema", format!("step `{id}`: `output_contract` is not a valid JSON Schema: {e}"), None);
    }
    if let Some(c) = &s.output_contract
        && !c.is_object()
    {
        cx.at(&s.id, "bad-schema", format!("step `{id}`: `output_contract` must be a JSON Schema object"), None);
    }
    let budget = super::compile_people::budget(cx, &s.id, s.budget.as_ref());
    let kind = kind?;
    let output_contract = match &kind {
        StepKind::Form(f) => Some(crate::human::form_contract(&f.fields)),
        StepKind::Approval(a) => Some(crate::human::approval_contract(&a.fields)),
        _ => s.output_contract.clone(),
    };
    let when = s.when.as_ref().and_then(|w| condition(cx, w));
    // A catch-all before other entries leaves them nothing.
    if let Some(i) = s.catch.iter().position(|c| c.errors.is_empty() || c.errors.iter().any(|e| e.value == "*"))
        && let Some(later) = s.catch.get(i + 1)
    {
        cx.at(
            &later.next,
            "unreachable-catch",
            format!("step `{id}`: this `catch` entry never matches: an earlier entry catches every error"),
            Some("put the entries for particular errors first and the catch-all (`*`, or no `errors`) last".into()),
        );
    }
    let reads = reads_of(&kind, s);
    Some(Step {
        id,
        when,
        catch,
        budget,
        resumable: s.resumable.unwrap_or(true),
        reads,
        kind,
        then: then?,
        retry,
        timeout,
        max_visits: s.max_visits,
        output_contract,
        compensate: s.compensate.as_ref().map(|c| c.value.clone()),
    })
}

/// The run data a step reads, from its templates and conditions; a
/// container's include its nested steps' reads of data outside it.
fn reads_of(kind: &StepKind, rs: &RawStep) -> crate::model::Reads {
    let mut texts: Vec<String> = Vec::new();
    let mut add = |v: &Value| {
        let _ = template::walk_strings::<()>(v, &mut |t| {
            texts.push(t.to_owned());
            Ok(())
        });
    };
    match kind {
        StepKind::Task { input, .. } | StepKind::Queue { input, .. } => add(input),
        StepKind::Transform { output } => add(output),
        StepKind::Wait { until: Some(u), .. } => add(u),
        StepKind::Http { request, .. } => add(request),
        StepKind::Map { items, .. } => add(items),
        StepKind::Workflow { inputs, .. } => add(inputs),
        StepKind::Ai(_) | StepKind::Form(_) | StepKind::Approval(_) => {
            for v in super::compile_people::texts(rs) {
                add(&v);
            }
            for v in rs.ai.iter().flat_map(|a| a.scripted.iter().flatten()) {
                add(v);
            }
        }
        StepKind::Fail { cause, .. } => add(cause),
        StepKind::Branch { .. }
        | StepKind::Switch { .. }
        | StepKind::Wait { .. }
        | StepKind::Parallel { .. }
        | StepKind::Dag { .. } => {}
    }
    if let Some(b) = &rs.branch {
        texts.push(b.condition.value.clone());
    }
    if let Some(w) = &rs.when {
        texts.push(w.value.clone());
    }
    if let Some(sw) = &rs.switch {
        texts.extend(sw.cases.iter().map(|c| c.when.value.clone()));
    }
    let mut reads =
        crate::model::Reads { all: rs.ai.as_ref().is_some_and(|a| a.template.is_some()), ..Default::default() };
    for t in &texts {
        for r in references(t) {
            match r {
                Ref::Input(name) => reads.inputs.insert(name),
                // The run's own facts do not change on a resume (its time
                // is recorded where it is read).
                Ref::Run(name) => {
                    reads.now |= name == "now";
                    false
                }
                Ref::Step { step, field } => {
                    match field {
                        Some(f) => reads.fields.insert((step.clone(), f)),
                        None => reads.whole.insert(step.clone()),
                    };
                    reads.steps.insert(step)
                }
            };
        }
        reads.all |= reads_whole(t, "steps") || reads_whole(t, "inputs");
    }
    let nested: Vec<&Step> = match kind {
        StepKind::Parallel { branches, .. } => branches.iter().flat_map(|(_, b)| b).collect(),
        StepKind::Map { steps, .. } | StepKind::Dag { steps, .. } => steps.iter().collect(),
        _ => Vec::new(),
    };
    let inner: HashSet<&str> = nested.iter().map(|s| s.id.as_str()).collect();
    for n in &nested {
        reads.all |= n.reads.all;
        reads.inputs.extend(n.reads.inputs.iter().cloned());
        reads.steps.extend(n.reads.steps.iter().filter(|s| !inner.contains(s.as_str())).cloned());
        reads.whole.extend(n.reads.whole.iter().filter(|s| !inner.contains(s.as_str())).cloned());
        reads.fields.extend(n.reads.fields.iter().filter(|(s, _)| !inner.contains(s.as_str())).cloned());
    }
    reads
}

/// Whether `text` uses `name` other than as `name.FIELD`.
fn reads_whole(text: &str, name: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(name).any(|(i, _)| {
        let before = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'.');
        let after = bytes.get(i + name.len()).copied();
        before && !matches!(after, Some(b'.') | Some(b'_')) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Successor step indices (`None` = end) of a step within its block.
fn successors(block: &[Step], step: &Step) -> Vec<Option<usize>> {
    let idx = |t: &Target| match t {
        Target::End => None,
        Target::Step(s) => block.iter().position(|x| &x.id == s),
    };
    let mut out = match &step.kind {
        StepKind::Branch { then, otherwise, .. } => vec![idx(then), idx(otherwise)],
        StepKind::Switch { cases, default } => cases.iter().map(|(_, t)| idx(t)).chain([idx(default)]).collect(),
        StepKind::Fail { .. } => vec![None],
        _ => vec![idx(&step.then)],
    };
    out.extend(step.catch.iter().map(|c| idx(&c.next)));
    out
}

/// What templates and conditions read of the run itself (`run.FIELD`).
pub const RUN_FIELDS: &[&str] =
    &["id", "workflow", "version", "started_by", "started_at", "parent_id", "parent_step", "attempt", "uuid", "now"];

/// The error kinds the engine itself gives, and the families they are in:
/// a `catch` pattern in one of these families must name one of them.
pub const ENGINE_ERROR_KINDS: &[&str] = &[
    "template",
    "condition",
    "limit",
    "contract",
    "timeout",
    "max_visits",
    "task.failed",
    "http.status",
    "http.connect",
    "http.request",
    "http.timeout",
    "http.body_too_large",
    "ai.auth",
    "ai.config",
    "ai.connect",
    "ai.invalid_output",
    "ai.mode_rejected",
    "ai.rate_limited",
    "ai.response",
    "ai.status",
    "ai.timeout",
    "ai.vars",
    "budget.exceeded",
    "budget.unpriced",
    "input.expired",
    "approval.expired",
    "approval.rejected",
];

/// Checks one `catch` error pattern: a kind of the engine's families must
/// exist (`http.stauts` is a typo, not a custom kind); other kinds are the
/// workflow's own (from tasks and `fail` steps) and pass.
fn error_pattern(cx: &mut Ctx<'_>, e: &Spanned<String>) {
    let p = e.value.as_str();
    let families = ["http", "ai", "budget", "input", "approval", "task"];
    let family = p.split_once('.').map(|(f, _)| f);
    let status = p.strip_prefix("http.status.").and_then(|n| n.parse::<u16>().ok());
    let known = p == "*"
        || status.is_some_and(|n| (400..=599).contains(&n))
        || p.strip_suffix(".*").is_some_and(|f| !f.is_empty())
        || ENGINE_ERROR_KINDS.contains(&p)
        || family.is_none_or(|f| !families.contains(&f));
    if !known || p.is_empty() {
        let help = did_you_mean(p, ENGINE_ERROR_KINDS.iter().copied())
            .map(|k| format!("did you mean `{k}`?"))
            .unwrap_or_else(|| format!("`{}.*` matches every error of the family", family.unwrap_or(p)));
        cx.at(e, "unknown-error-kind", format!("no error kind `{p}`: the engine gives none by that name"), Some(help));
    }
}

fn check_graph(cx: &mut Ctx<'_>, raw: &RawWorkflow, w: &Workflow) {
    let output = raw.output.as_ref().map(|o| (&o.value, o));
    check_block(cx, w, &raw.steps, &w.steps, &HashSet::new(), output, None);
}

/// Checks one sequence of steps (the top level, a parallel branch or a map
/// body) and, recursively, the sequences inside it. `outer` holds the steps
/// that have completed on every path to the enclosing step; `output` is the
/// workflow output, checked at the end of the top level; `within` is the
/// step holding this sequence.
fn check_block(
    cx: &mut Ctx<'_>,
    w: &Workflow,
    raw_steps: &[RawStep],
    steps: &[Step],
    outer: &HashSet<String>,
    output: Option<(&Value, &Spanned<Value>)>,
    within: Option<&str>,
) {
    let n = steps.len();
    let end = n; // virtual exit node
    let succ: Vec<Vec<usize>> =
        steps.iter().map(|s| successors(steps, s).into_iter().map(|t| t.unwrap_or(end)).collect()).collect();

    // Reachability from the first step.
    let mut reach = vec![false; n + 1];
    let mut stack = vec![0usize];
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut reach[v], true) {
            continue;
        }
        if v < n {
            stack.extend(succ[v].iter().copied());
        }
    }
    for (i, s) in raw_steps.iter().enumerate() {
        if !reach[i] {
            cx.at(
                &s.id,
                "unreachable-step",
                format!("step `{}` can never run: no path from the first step reaches it", s.id.value),
                Some("jump to it with `next`, a branch or a switch, or remove it".into()),
            );
        }
    }

    // Loops must be bounded: every cycle needs a step with max_visits.
    let reaches = |from: usize, to: usize| -> bool {
        let mut seen = vec![false; n + 1];
        let mut st = succ[from].clone();
        while let Some(v) = st.pop() {
            if v == to {
                return true;
            }
            if v < n && !std::mem::replace(&mut seen[v], true) {
                st.extend(succ[v].iter().copied());
            }
        }
        false
    };
    let mut reported: HashSet<usize> = HashSet::new();
    for (v, reachable) in reach.iter().enumerate().take(n) {
        if !reachable || reported.contains(&v) || !reaches(v, v) {
            continue;
        }
        let cycle: Vec<usize> = (0..n).filter(|&u| u == v || (reaches(v, u) && reaches(u, v))).collect();
        reported.extend(cycle.iter().copied());
        if cycle.iter().all(|&u| steps[u].max_visits.is_none()) {
            let names: Vec<&str> = cycle.iter().map(|&u| steps[u].id.as_str()).collect();
            cx.at(
                &raw_steps[v].id,
                "unbounded-loop",
                format!(
                    "steps {} form a loop with no bound",
                    names.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                ),
                Some(format!("add `max_visits: N` to one of them, e.g. to `{}`", names[0])),
            );
        }
    }

    // Dominators: the steps every path from the start passes through.
    let all: BTreeSet<usize> = (0..=n).collect();
    let mut dom: Vec<BTreeSet<usize>> = (0..=n).map(|v| if v == 0 { [0].into() } else { all.clone() }).collect();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (v, ss) in succ.iter().enumerate() {
        if reach[v] {
            for &s in ss {
                preds[s].push(v);
            }
        }
    }
    let mut changed = true;
    while changed {
        changed = false;
        for v in 1..=n {
            if !reach[v] {
                continue;
            }
            let mut new: Option<BTreeSet<usize>> = None;
            for &p in &preds[v] {
                new = Some(match new {
                    None => dom[p].clone(),
                    Some(acc) => acc.intersection(&dom[p]).copied().collect(),
                });
            }
            let mut new = new.unwrap_or_default();
            new.insert(v);
            if new != dom[v] {
                dom[v] = new;
                changed = true;
            }
        }
    }

    // References in templates and conditions.
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let input_props: Option<Vec<String>> = w
        .inputs_schema
        .as_ref()
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect());
    let check_refs = |cx: &mut Ctx<'_>, at: &Spanned<String>, user: Option<usize>, text: &str| {
        let guarded = guarded_steps(text);
        let guarded_out = guarded_outputs(text);
        for r in references(text) {
            match r {
                Ref::Input(name) => {
                    if let Some(props) = &input_props
                        && !props.contains(&name)
                    {
                        let help = did_you_mean(&name, props.iter().map(String::as_str))
                            .map(|s| format!("did you mean `inputs.{s}`?"));
                        cx.at(
                            at,
                            "unknown-input",
                            format!("`inputs.{name}` is not declared in the workflow's `inputs` schema"),
                            help.or(Some("declare it under `inputs.properties`".into())),
                        );
                    }
                }
                Ref::Run(name) if name == "now" && user.is_none() && within.is_none() => {
                    cx.at(
                        at,
                        "misplaced-run-field",
                        "the workflow output uses `run.now`, which is a step's time: the output has none recorded"
                            .into(),
                        Some(
                            "read the time in a `transform` step (`{ at: \"{{ run.now }}\" }`) and use its output"
                                .into(),
                        ),
                    );
                }
                Ref::Run(name) => {
                    if !RUN_FIELDS.contains(&name.as_str()) {
                        let help = did_you_mean(&name, RUN_FIELDS.iter().copied())
                            .map(|s| format!("did you mean `run.{s}`?"))
                            .unwrap_or_else(|| format!("`run` has: {}", RUN_FIELDS.join(", ")));
                        cx.at(
                            at,
                            "unknown-run-field",
                            format!("`run.{name}` is not something a run knows of itself"),
                            Some(help),
                        );
                    }
                }
                Ref::Step { step, field } => {
                    let Some(referenced) = w.step(&step) else {
                        let help = did_you_mean(&step, cx.all_ids.iter().copied())
                            .map(|s| format!("did you mean `steps.{s}`?"));
                        cx.at(at, "unknown-step-reference", format!("`steps.{step}` refers to no step"), help);
                        continue;
                    };
                    let contract = referenced.output_contract.clone();
                    let user_node = user.unwrap_or(end);
                    let whom = || {
                        user.map(|u| format!("step `{}`", steps[u].id)).unwrap_or_else(|| match within {
                            Some(c) => format!("step `{c}`"),
                            None => "the workflow output".into(),
                        })
                    };
                    let local = index.get(step.as_str()).copied();
                    let dag_error_read = || {
                        // A dag step's caught error, read by a step that depends on it.
                        matches!(w.block_of(&step), Some(Block::Dag { dag }) if within == Some(dag.as_str())
                            && dag_before(w, dag, user.map_or("", |u| steps[u].id.as_str())).contains(&step))
                            && referenced.when.is_none()
                            && (!text_reads_output(text, &step) || guarded_out.contains(&step))
                    };
                    if guarded.contains(&step) || (local.is_none() && (outer.contains(&step) || dag_error_read())) {
                        // Guarded (`steps.X is defined` / `has(steps.X)`), or
                        // completed before the enclosing step started.
                    } else if local.is_none() && within == Some(step.as_str()) {
                        cx.at(
                            at,
                            "self-reference",
                            format!("{} is inside `{step}` and uses `steps.{step}`, whose output exists only once everything inside it has finished", whom()),
                            Some("inside a map, use `item` and `index`; read the map's or parallel's output after it".into()),
                        );
                    } else if local.is_none() {
                        let (code, message, help) = match w.block_of(&step) {
                            Some(Block::Branch { parallel, branch }) if within == Some(parallel.as_str()) => (
                                "maybe-not-run",
                                format!(
                                    "{} uses `steps.{step}`, which runs in branch `{branch}` of parallel `{parallel}`: branches run at the same time, so it may not have run yet",
                                    whom()
                                ),
                                format!("read it after the parallel step, as `steps.{parallel}.output.{branch}`"),
                            ),
                            Some(Block::Branch { parallel, branch }) => (
                                "nested-step-reference",
                                format!("{} uses `steps.{step}`, which is inside parallel `{parallel}`", whom()),
                                format!(
                                    "after the parallel step, read its branch's result as `steps.{parallel}.output.{branch}`"
                                ),
                            ),
                            Some(Block::Dag { dag }) if within == Some(dag.as_str()) => {
                                let user_id = user.map_or("", |u| steps[u].id.as_str());
                                let before = dag_before(w, dag, user_id);
                                if before.contains(&step) {
                                    (
                                        "maybe-not-run",
                                        format!(
                                            "{} uses `steps.{step}`, but `{step}` may end without an output: {}",
                                            whom(),
                                            if referenced.when.is_some() {
                                                "its `when` guard may skip it"
                                            } else {
                                                "it catches its errors"
                                            }
                                        ),
                                        if referenced.when.is_some() {
                                            format!(
                                                "guard the reference: `{{{{ steps.{step}.output if steps.{step} is defined else ... }}}}` in a template, `has(steps.{step})` in a condition"
                                            )
                                        } else {
                                            format!(
                                                "guard the reference: `{{{{ steps.{step}.output if steps.{step}.output is defined else ... }}}}` in a template, `has(steps.{step}.output)` in a condition; its error is `steps.{step}.error`"
                                            )
                                        },
                                    )
                                } else {
                                    (
                                        "maybe-not-run",
                                        format!(
                                            "{} uses `steps.{step}`, which is not among its dependencies in dag `{dag}`: it may not have run yet",
                                            whom()
                                        ),
                                        format!("add `{step}` to the `depends_on` of `{user_id}`"),
                                    )
                                }
                            }
                            Some(Block::Dag { dag }) => (
                                "nested-step-reference",
                                format!("{} uses `steps.{step}`, which is inside dag `{dag}`", whom()),
                                format!("after the dag step, read its result as `steps.{dag}.output.{step}`"),
                            ),
                            Some(Block::Map { map }) => (
                                "nested-step-reference",
                                format!("{} uses `steps.{step}`, which runs once per item inside map `{map}`", whom()),
                                format!("after the map step, `steps.{map}.output` lists each item's result in order"),
                            ),
                            Some(Block::Compensation) => (
                                "nested-step-reference",
                                format!(
                                    "{} uses `steps.{step}`, a compensation step, which runs only while a failing run undoes its work",
                                    whom()
                                ),
                                "steps cannot read a compensation's output".to_owned(),
                            ),
                            _ => (
                                "maybe-not-run",
                                format!(
                                    "{} uses `steps.{step}`, but `{step}` does not run on every path to it",
                                    whom()
                                ),
                                format!(
                                    "move the reference after a point every path passes, or guard it: `{{{{ steps.{step}.output if steps.{step} is defined else ... }}}}` in a template, `has(steps.{step})` in a condition"
                                ),
                            ),
                        };
                        cx.at(at, code, message, Some(help));
                    } else if local.is_some() && user == local {
                        cx.at(
                            at,
                            "self-reference",
                            format!("step `{step}` refers to its own output"),
                            Some(format!("a step's output exists only after it completes; in a loop, read the previous visit's output with a guard: `steps.{step}.output if steps.{step} is defined else ...`")),
                        );
                    } else if let Some(target) = local
                        && !dom[user_node].contains(&target)
                    {
                        cx.at(at, "maybe-not-run", format!("{} uses `steps.{step}`, but `{step}` does not run on every path to it", whom()), Some(format!("move the reference after a point every path passes, or guard it: `{{{{ steps.{step}.output if steps.{step} is defined else ... }}}}` in a template, `has(steps.{step})` in a condition")));
                    } else if let Some(target) = local
                        && let Some(guard) = &steps[target].when
                    {
                        cx.at(at, "maybe-not-run", format!("{} uses `steps.{step}`, but `{step}` is skipped when its guard `{}` is false", whom(), guard.source()), Some(format!("guard the reference too: `{{{{ steps.{step}.output if steps.{step} is defined else ... }}}}` in a template, `has(steps.{step})` in a condition")));
                    }
                    if let (Some(u), Some(target)) = (user, local)
                        && text_reads_output(text, &step)
                        && steps[target].catch.iter().any(|c| c.next == Target::Step(steps[u].id.clone()))
                    {
                        cx.at(at, "caught-step-output", format!("step `{}` handles the errors of `{step}` but uses `steps.{step}.output`, which a failed `{step}` does not have", steps[u].id), Some(format!("read the error as `steps.{step}.error` (`kind`, `message`, `attempt`); if the step is also reached when `{step}` succeeded, guard it: `steps.{step}.output if steps.{step}.output is defined else ...`")));
                    }
                    if let (Some(field), Some(props)) =
                        (field, contract.as_ref().and_then(|c| c.get("properties")).and_then(Value::as_object))
                        && !props.contains_key(&field)
                    {
                        let help = did_you_mean(&field, props.keys().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"));
                        cx.at(at, "unknown-output-field", format!("`steps.{step}.output.{field}`: the output contract of `{step}` declares no field `{field}`"), help.or(Some(format!("declared fields: {}", props.keys().cloned().collect::<Vec<_>>().join(", ")))));
                    }
                }
            }
        }
    };
    for (i, (s, rs)) in steps.iter().zip(raw_steps).enumerate() {
        let mut texts: Vec<(&Spanned<String>, String)> = Vec::new();
        match &s.kind {
            StepKind::Task { input, .. } | StepKind::Queue { input, .. } => collect_strings(input, &rs.id, &mut texts),
            StepKind::Transform { output } => collect_strings(output, &rs.id, &mut texts),
            StepKind::Wait { until: Some(u), .. } => collect_strings(u, &rs.id, &mut texts),
            StepKind::Http { request, .. } => collect_strings(request, &rs.id, &mut texts),
            StepKind::Map { items, .. } => collect_strings(items, &rs.id, &mut texts),
            StepKind::Workflow { inputs, .. } => collect_strings(inputs, &rs.id, &mut texts),
            StepKind::Ai(_) | StepKind::Form(_) | StepKind::Approval(_) => {
                for v in super::compile_people::texts(rs) {
                    collect_strings(&v, &rs.id, &mut texts);
                }
            }
            StepKind::Fail { cause, .. } => collect_strings(cause, &rs.id, &mut texts),
            StepKind::Branch { .. }
            | StepKind::Switch { .. }
            | StepKind::Wait { .. }
            | StepKind::Parallel { .. }
            | StepKind::Dag { .. } => {}
        }
        if let Some(b) = &rs.branch {
            texts.push((&b.condition, b.condition.value.clone()));
        }
        if let Some(g) = &rs.when {
            texts.push((g, g.value.clone()));
        }
        if let Some(sw) = &rs.switch {
            for c in &sw.cases {
                texts.push((&c.when, c.when.value.clone()));
            }
        }
        for (at, t) in texts {
            check_refs(cx, at, Some(i), &t);
        }
    }
    if let Some((out, at)) = output {
        let at = Spanned::new(String::new(), at.referenced, at.defined);
        let mut texts = Vec::new();
        collect_strings(out, &at, &mut texts);
        for (at, t) in texts {
            check_refs(cx, at, None, &t);
        }
    }

    // The sequences inside containers see what completed before them.
    for (i, (s, rs)) in steps.iter().zip(raw_steps).enumerate() {
        let inner: Vec<(&[RawStep], &[Step])> = match (&s.kind, &rs.parallel, &rs.map) {
            (StepKind::Parallel { branches, .. }, Some(rp), _) => {
                branches.iter().zip(&rp.branches).map(|((_, st), rb)| (rb.steps.as_slice(), st.as_slice())).collect()
            }
            (StepKind::Map { steps: st, .. }, _, Some(rm)) => vec![(rm.steps.as_slice(), st.as_slice())],
            (StepKind::Dag { steps: st, .. }, _, _) if rs.dag.is_some() => {
                let rd = rs.dag.as_ref().map_or(&[][..], |d| d.steps.as_slice());
                (0..st.len()).map(|j| (&rd[j..=j], &st[j..=j])).collect()
            }
            _ => continue,
        };
        if !reach[i] {
            continue;
        }
        let mut seen = outer.clone();
        seen.extend(
            dom[i].iter().filter(|&&d| d != i && d < n && steps[d].when.is_none()).map(|&d| steps[d].id.clone()),
        );
        for (rsteps, st) in inner {
            // A dag's step also sees the steps it depends on (directly or
            // not) that always end with an output.
            let mut seen = seen.clone();
            if let (StepKind::Dag { steps: nodes, .. }, Some(node)) = (&s.kind, st.first()) {
                seen.extend(dag_before(w, &s.id, &node.id).into_iter().filter(|d| {
                    nodes.iter().find(|x| &x.id == d).is_some_and(|x| x.when.is_none() && x.catch.is_empty())
                }));
            }
            check_block(cx, w, rsteps, st, &seen, None, Some(&s.id));
        }
    }
}

fn collect_strings<'a>(v: &Value, at: &'a Spanned<String>, out: &mut Vec<(&'a Spanned<String>, String)>) {
    let _ = template::walk_strings::<()>(v, &mut |s| {
        out.push((at, s.to_owned()));
        Ok(())
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Ref {
    Input(String),
    Run(String),
    Step { step: String, field: Option<String> },
}

/// Steps whose absence the text tests for (`steps.X is defined`,
/// `steps.X is not defined`, `has(steps.X)`).
fn guarded_steps(text: &str) -> Vec<String> {
    guarded(text, "")
}

/// The steps whose output the text tests (`steps.X.output is defined`,
/// `has(steps.X.output)`): enough for a step that may fail and be caught
/// (it has `steps.X.error`), not for one that may be skipped.
fn guarded_outputs(text: &str) -> Vec<String> {
    guarded(text, ".output")
}

fn guarded(text: &str, member: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("steps.") {
        let step = ident_at(&text[i + 6..]);
        let Some(rest) = text[i + 6 + step.len()..].strip_prefix(member) else { continue };
        let after = rest.trim_start();
        let tested = after.starts_with("is defined") || after.starts_with("is not defined");
        let has = text[..i].trim_end().ends_with("has(") && after.starts_with(')');
        if !step.is_empty() && (tested || has) {
            out.push(step.to_owned());
        }
    }
    out
}

/// The first `{{ … }}` or `{% … %}` of a template that does more with a
/// secret than insert it as it is (`{{ secrets.NAME }}`).
fn transformed_secret(text: &str) -> Option<String> {
    if secret_names(text).is_empty() {
        return None;
    }
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        let close = match after.get(..2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            _ => {
                rest = &rest[i + 1..];
                continue;
            }
        };
        let Some(end) = after.find(close) else { break };
        let inner = after[2..end].trim();
        let plain = inner.strip_prefix("secrets.").is_some_and(|n| !n.is_empty() && ident_at(n) == n);
        if !secret_names(inner).is_empty() && (close == "%}" || !plain) {
            return Some(after[..end + 2].to_owned());
        }
        rest = &after[end + 2..];
    }
    None
}

/// Names in `secrets.NAME` occurrences.
fn secret_names(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    text.match_indices("secrets.")
        .filter(|(i, _)| {
            *i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'.')
        })
        .map(|(i, _)| ident_at(&text[i + 8..]).to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Diagnostics for secrets the workflow uses that `available` lacks.
pub fn check_secrets(w: &Workflow, available: &[&str], file: &str) -> Vec<Diagnostic> {
    let mut seen = HashSet::new();
    w.secret_refs
        .iter()
        .filter(|r| !available.contains(&r.name.as_str()) && seen.insert(r.name.clone()))
        .map(|r| Diagnostic {
            code: "unknown-secret",
            file: file.to_owned(),
            line: r.line,
            column: r.column,
            message: format!("secret `{}` is not set", r.name),
            help: Some(format!(
                "set the environment variable {}{} or add `{}=...` to the secrets file",
                crate::secrets::ENV_PREFIX,
                r.name,
                r.name
            )),
        })
        .collect()
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Whether `text` reads `steps.STEP.output` unguarded (not `... is defined`).
fn text_reads_output(text: &str, step: &str) -> bool {
    let needle = format!("steps.{step}.output");
    text.match_indices(&needle).any(|(i, _)| {
        let rest = &text[i + needle.len()..];
        !rest.trim_start().starts_with("is defined") && !rest.trim_start().starts_with("is not defined")
    })
}

/// Finds `inputs.NAME` and `steps.ID[.output.FIELD]` in a template or condition.
fn references(text: &str) -> Vec<Ref> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let boundary =
        |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'.');
    for (i, _) in text.match_indices("run.") {
        if boundary(i) {
            let name = ident_at(&text[i + 4..]);
            if !name.is_empty() {
                out.push(Ref::Run(name.to_owned()));
            }
        }
    }
    for (i, _) in text.match_indices("inputs.") {
        if boundary(i) {
            let name = ident_at(&text[i + 7..]);
            if !name.is_empty() {
                out.push(Ref::Input(name.to_owned()));
            }
        }
    }
    for (i, _) in text.match_indices("steps.") {
        if !boundary(i) {
            continue;
        }
        let rest = &text[i + 6..];
        let step = ident_at(rest);
        if step.is_empty() {
            continue;
        }
        let after = &rest[step.len()..];
        let field = after.strip_prefix(".output.").map(ident_at).filter(|f| !f.is_empty()).map(str::to_owned);
        out.push(Ref::Step { step: step.to_owned(), field });
    }
    out
}

/// The lifecycle hooks of `on:`, checked.
fn hooks(
    cx: &mut Ctx<'_>,
    on: Option<&Spanned<std::collections::BTreeMap<String, Vec<super::raw::RawHook>>>>,
    secret_refs: &mut Vec<crate::model::SecretRef>,
) -> Vec<crate::model::Hook> {
    use crate::model::{Hook, LIFECYCLE_EVENTS};
    let Some(on) = on else { return Vec::new() };
    let mut out = Vec::new();
    for (event, list) in &on.value {
        if !LIFECYCLE_EVENTS.contains(&event.as_str()) {
            cx.at(
                on,
                "unknown-event",
                format!("`on` names `{event}`, which is not a lifecycle event"),
                Some(format!("use one of {}", LIFECYCLE_EVENTS.join(", "))),
            );
            continue;
        }
        for h in list {
            match (&h.url, &h.start) {
                (Some(url), None) => {
                    let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                    if !ok {
                        cx.at(on, "bad-hook", format!("`on.{event}`: `{url}` is not an http or https URL"), None);
                    }
                    match &h.secret {
                        Some(name) => secret_refs.push(crate::model::SecretRef {
                            name: name.clone(),
                            line: on.referenced.line(),
                            column: on.referenced.column(),
                        }),
                        None => cx.at(
                            on,
                            "bad-hook",
                            format!("`on.{event}`: a `url` hook needs a `secret` to sign its deliveries with"),
                            Some("name a secret: `secret: OPS_HOOK` (set CAIRN_SECRET_OPS_HOOK)".into()),
                        ),
                    }
                }
                (None, Some(w)) => {
                    if w.is_empty() || !w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                        cx.at(on, "bad-hook", format!("`on.{event}`: `{w}` is not a workflow name"), None);
                    }
                }
                _ => cx.at(
                    on,
                    "bad-hook",
                    format!("`on.{event}`: a hook has either `url` (with `secret`) or `start`, not both"),
                    None,
                ),
            }
            out.push(Hook {
                event: event.clone(),
                url: h.url.clone(),
                secret: h.secret.clone(),
                start: h.start.clone(),
                max_attempts: h.max_attempts.unwrap_or(8).clamp(1, 100),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references() {
        assert_eq!(
            references("{{ steps.draft.output.title }} and inputs.topic, mysteps.x"),
            vec![Ref::Input("topic".into()), Ref::Step { step: "draft".into(), field: Some("title".into()) }]
        );
    }
}
