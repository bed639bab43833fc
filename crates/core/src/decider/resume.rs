//! What a resumed run keeps and runs again. `RunResumed` records the plan;
//! from then on every step the run enters is either run again or kept
//! (`StepKept`, its recorded output standing), decided here from the
//! recorded plan and what has changed since: pure, so a replay decides the
//! same.
//!
//! - Policy `downstream`: the steps in the plan's `rerun` (the step resumed
//!   from, the failed ones, everything after them) run again; so does
//!   everything inside a container resumed from.
//! - Policy `failed-only`: the step resumed from and the failed ones run
//!   again; any other step that completed before runs again only if run
//!   data it reads (`steps.X`, `inputs.NAME`) has changed since the resume:
//!   a step that ran again with another output, or an input given anew.
//!   Inside a map that started again, an iteration whose item changed runs
//!   again.
//!
//! A step that never completed before always runs.

use std::collections::{BTreeMap, BTreeSet};

use cairn_events::{RunResumed, StepKept};
use serde_json::Value;

use super::{Cursor, RunState, RunStatus, Thread, bare};
use crate::model::{Step, StepKind, Workflow};
use crate::path::InstancePath;

/// How a resume chooses what runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Only what failed, and what reads changed data.
    FailedOnly,
    /// What failed and everything after it.
    Downstream,
}

impl Policy {
    /// The name in the CLI, the API and `RunResumed`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::FailedOnly => "failed-only",
            Policy::Downstream => "downstream",
        }
    }

    /// Parses `failed-only` or `downstream`.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "failed-only" => Some(Policy::FailedOnly),
            "downstream" => Some(Policy::Downstream),
            _ => None,
        }
    }
}

/// The state of a resume, folded from `RunResumed` and what followed.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The policy.
    pub policy: Policy,
    /// The step instance resumed from.
    pub from: String,
    /// Instances that run again whatever changed.
    pub forced: BTreeSet<String>,
    /// The outputs recorded before the resume, by instance.
    pub prior: BTreeMap<String, std::sync::Arc<Value>>,
    /// The highest attempt of each instance before the resume.
    pub base: BTreeMap<String, u32>,
    /// The items of each map instance before the resume.
    pub prior_items: BTreeMap<String, Value>,
    /// Instances started since the resume.
    pub started: BTreeSet<String>,
    /// Instances that ran again and produced another output.
    pub changed: BTreeSet<String>,
    /// Of those, the top-level output fields that differ (`*`: the output
    /// is not an object, or changed as a whole).
    pub changed_fields: BTreeSet<(String, String)>,
    /// Inputs the resume gave new values.
    pub changed_inputs: BTreeSet<String>,
}

/// Folds `RunResumed`: the run is running again, entering the top-level
/// step that holds the step resumed from.
pub(super) fn evolve(s: &mut RunState, e: &RunResumed) {
    // A saga whose undo stopped at a failed compensation: the undo goes
    // on from that compensation (the run's error stays the original one).
    if let Some(c) = &s.compensating
        && c.queue.get(c.done) == Some(&e.from_step)
    {
        s.status = RunStatus::Running;
        s.error = None;
        s.output = None;
        s.threads.clear();
        s.threads.insert(String::new(), Thread { cursor: Cursor::Compensating, ..Thread::default() });
        return;
    }
    let policy = Policy::parse(&e.policy).unwrap_or(Policy::FailedOnly);
    let mut changed_inputs = BTreeSet::new();
    if let (Some(Value::Object(new)), Value::Object(old)) = (&e.inputs, std::sync::Arc::make_mut(&mut s.inputs)) {
        for (k, v) in new {
            if old.get(k) != Some(v) {
                changed_inputs.insert(k.clone());
                old.insert(k.clone(), v.clone());
            }
        }
    }
    let mut forced: BTreeSet<String> = e.plan.failed.iter().cloned().collect();
    forced.insert(e.from_step.clone());
    if policy == Policy::Downstream {
        // A step predicted to be no longer reached is after the resume
        // point too: should the path reach it after all, it runs again.
        forced.extend(e.plan.rerun.iter().chain(&e.plan.no_longer_reached).cloned());
    }
    // A container holding a forced step runs again (its other insides may be kept).
    for f in forced.clone() {
        forced.extend(ancestors(s, s.scope_of(&f)));
    }
    let top = top_level(s, &e.from_step);
    s.resume = Some(Box::new(Resumed {
        policy,
        from: e.from_step.clone(),
        forced,
        prior: s.outputs.clone(),
        base: s.attempts.clone(),
        prior_items: s.map_items.clone(),
        started: BTreeSet::new(),
        changed: BTreeSet::new(),
        changed_fields: BTreeSet::new(),
        changed_inputs,
    }));
    // What completed from the step resumed at on is entered again: each
    // such output comes back when its step runs again or is kept, and the
    // output of a step no longer reached leaves the run's context.
    if let Some(i) = s.completed.iter().position(|c| *c == top) {
        for c in s.completed_from(i) {
            s.outputs.remove(&c);
        }
    }
    s.status = RunStatus::Running;
    s.error = None;
    s.output = None;
    s.compensating = None;
    s.visits.clear();
    s.threads.clear();
    s.threads.insert(String::new(), Thread { cursor: Cursor::Enter { step: top }, ..Thread::default() });
}

/// The container instance a thread belongs to (`p.branch` → `p`,
/// `m[2]` → `m`); `None` for the top level.
pub fn container_of(key: &str) -> Option<&str> {
    InstancePath::new(key).container()
}

/// The containers around a thread, innermost first.
pub fn ancestors(s: &RunState, key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut next = container_of(key).map(str::to_owned);
    while let Some(c) = next {
        next = container_of(s.scope_of(&c)).map(str::to_owned);
        out.push(c);
    }
    out
}

/// The top-level step that holds an instance.
fn top_level(s: &RunState, instance: &str) -> String {
    ancestors(s, s.scope_of(instance)).pop().unwrap_or_else(|| instance.to_owned())
}

impl Resumed {
    /// Whether a step entered now keeps its recorded output; the event
    /// that records so.
    pub(super) fn keep(&self, w: &Workflow, s: &RunState, st: &Step, key: &str, instance: &str) -> Option<StepKept> {
        let output = self.prior.get(instance)?;
        if self.forced.contains(instance) || self.started.contains(instance) {
            return None;
        }
        let around = ancestors(s, key);
        let reason = match self.policy {
            Policy::Downstream => {
                if around.contains(&self.from) {
                    return None;
                }
                "not after the failed step".to_owned()
            }
            Policy::FailedOnly => {
                if !self.reads_changed(w, s, st, instance, &around) {
                    "what it reads is unchanged".to_owned()
                } else if let StepKind::Approval(a) = &st.kind
                    && let Some(hash) = output.get("content_hash").and_then(Value::as_str)
                    && approved_content_hash(w, s, a, instance).as_deref() == Some(hash)
                {
                    // What was approved is what would be shown again: the approval stands.
                    format!("the content it approved is unchanged (hash {hash})")
                } else {
                    return None;
                }
            }
        };
        let target = match &st.kind {
            StepKind::Branch { .. } | StepKind::Switch { .. } => {
                output.get("target").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        };
        Some(StepKept {
            step_id: instance.to_owned(),
            output: (**output).clone(),
            target,
            reason,
            scope: key.to_owned(),
        })
    }

    fn reads_changed(&self, w: &Workflow, s: &RunState, st: &Step, instance: &str, around: &[String]) -> bool {
        let r = &st.reads;
        if r.all && !(self.changed.is_empty() && self.changed_inputs.is_empty()) {
            return true;
        }
        if r.inputs.iter().any(|i| self.changed_inputs.contains(i)) {
            return true;
        }
        // Inside a map that started again: its item must be the same.
        for c in around {
            if !self.started.contains(c) || !w.step(bare(c)).is_some_and(|m| matches!(m.kind, StepKind::Map { .. })) {
                continue;
            }
            let Some(index) = InstancePath::new(instance).index_in(c) else {
                return true;
            };
            let before = self.prior_items.get(c).and_then(|v| v.get(index));
            let now = s.map_items.get(c).and_then(|v| v.get(index));
            if before.is_none() || before != now {
                return true;
            }
        }
        // `steps.X` means X in this iteration, or in an enclosing one.
        let prefixes = InstancePath::new(instance).prefixes();
        r.steps.iter().any(|id| {
            prefixes.iter().any(|p| {
                let inst = crate::path::join(p, id);
                self.changed.contains(&inst)
                    && (r.whole.contains(id)
                        || self.changed_fields.contains(&(inst.clone(), "*".to_owned()))
                        || r.fields
                            .iter()
                            .any(|(s, f)| s == id && self.changed_fields.contains(&(inst.clone(), f.clone()))))
            })
        })
    }

    /// Records that an instance that ran again completed with `output`.
    pub(super) fn completed(&mut self, instance: &str, output: &Value) {
        if !self.started.contains(instance) {
            return;
        }
        let prior = self.prior.get(instance);
        let prior = prior.map(|p| &**p);
        if prior == Some(output) {
            return;
        }
        self.changed.insert(instance.to_owned());
        match (prior, output) {
            (Some(Value::Object(old)), Value::Object(new)) => {
                for k in old.keys().chain(new.keys()) {
                    if old.get(k) != new.get(k) {
                        self.changed_fields.insert((instance.to_owned(), k.clone()));
                    }
                }
            }
            _ => {
                self.changed_fields.insert((instance.to_owned(), "*".to_owned()));
            }
        }
    }
}

/// The hash of the content an approval would ask about now.
fn approved_content_hash(w: &Workflow, s: &RunState, a: &crate::human::ApprovalStep, instance: &str) -> Option<String> {
    let pre = InstancePath::new(instance).prefix();
    let ctx = super::context_with_placeholders(w, s, pre);
    crate::template::render(&a.content, &ctx).ok().map(|c| crate::human::content_hash(&c))
}
