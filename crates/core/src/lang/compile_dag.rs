//! Compiling a `dag`: its steps, each a sequence of one that ends its
//! thread, and their `depends_on` checked (every dependency a step of the
//! same dag, no cycle, no step routing control to another).

use std::collections::HashSet;

use super::ctx::{Ctx, END, concurrency};
use super::diagnostic::did_you_mean;
use super::raw::{RawDag, RawStep};
use crate::model::{Step, StepKind, Target, Workflow};

/// How a step is compiled (the compiler's own, passed in: a dag's steps are
/// steps like any other).
pub(super) type CompileStep = fn(&mut Ctx<'_>, &RawStep, Target, &[&str], bool) -> Option<Step>;

/// Compiles a `dag`: its steps (each a sequence of one that ends its
/// thread), their `depends_on` as indices, and the checks a graph needs:
/// every dependency a step of the same dag, no cycle, no step routing
/// control to another.
pub(super) fn dag(
    cx: &mut Ctx<'_>,
    s: &RawStep,
    d: &RawDag,
    in_map: bool,
    compile_step: CompileStep,
) -> Option<StepKind> {
    let id = &s.id.value;
    if d.steps.is_empty() {
        cx.at(
            &s.id,
            "empty-dag",
            format!("dag `{id}` has no steps"),
            Some("list its steps under `steps:`, each with the `depends_on` it starts after".into()),
        );
    }
    let ids: Vec<&str> = d.steps.iter().map(|n| n.id.value.as_str()).collect();
    let mut ok = true;
    let mut steps = Vec::new();
    let mut depends_on = Vec::new();
    for n in &d.steps {
        let nid = &n.id.value;
        let routes = n.branch.is_some() || n.switch.is_some() || n.next.is_some() || n.end;
        if routes {
            cx.at(
                &n.id,
                "dag-routing",
                format!("step `{nid}` of dag `{id}` has `branch`, `switch`, `next` or `end`; a dag's steps start by their dependencies, not by jumps"),
                Some("say what it starts after with `depends_on`, and skip it on a condition with `when`".into()),
            );
        }
        for c in n.catch.iter().filter(|c| c.next.value != END) {
            cx.at(
                &c.next,
                "dag-routing",
                format!("step `{nid}` of dag `{id}` sends its caught errors to `{}`; a dag's steps start by their dependencies, not by jumps", c.next.value),
                Some(format!("write `next: end`: the step ends with its error as `steps.{nid}.error`, and the steps that depend on it start")),
            );
            ok = false;
        }
        let mut deps: Vec<usize> = Vec::new();
        for dep in &n.depends_on {
            let name = dep.value.as_str();
            match ids.iter().position(|i| *i == name) {
                Some(_) if name == nid => cx.at(
                    dep,
                    "dag-cycle",
                    format!("step `{nid}` depends on itself"),
                    Some("remove it from its own `depends_on`".into()),
                ),
                Some(j) if deps.contains(&j) => cx.at(
                    dep,
                    "duplicate-dependency",
                    format!("step `{nid}` names `{name}` twice in `depends_on`"),
                    Some("name each dependency once".into()),
                ),
                Some(j) => deps.push(j),
                None if cx.all_ids.contains(&name) => cx.at(
                    dep,
                    "unknown-dependency",
                    format!("step `{nid}` depends on `{name}`, which is not a step of dag `{id}`"),
                    Some(format!(
                        "`depends_on` names steps of the same dag; the steps before `{id}` have completed when it starts, so need no naming"
                    )),
                ),
                None => {
                    let help = match did_you_mean(name, ids.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("the steps of dag `{id}`: {}", ids.join(", ")),
                    };
                    cx.at(dep, "unknown-dependency", format!("step `{nid}` depends on `{name}`, which is no step"), Some(help));
                }
            }
        }
        depends_on.push(deps);
        if routes {
            ok = false;
            continue;
        }
        match compile_step(cx, n, Target::End, &[], in_map) {
            Some(step) => steps.push(step),
            None => ok = false,
        }
    }
    // A cycle, named in the order it runs round.
    if let Some(cycle) = dag_cycle(&depends_on) {
        let links: Vec<String> = cycle
            .iter()
            .zip(cycle.iter().skip(1).chain(cycle.first()))
            .map(|(&a, &b)| format!("`{}` on `{}`", ids[a], ids[b]))
            .collect();
        let first = &d.steps[cycle[0]];
        let at = first.depends_on.iter().find(|x| x.value == ids[cycle[1 % cycle.len()]]).unwrap_or(&first.id);
        cx.at(
            at,
            "dag-cycle",
            format!("the steps of dag `{id}` depend on each other in a cycle: {}", links.join(", ")),
            Some("a step cannot start after itself: remove one of these dependencies".into()),
        );
        ok = false;
    }
    concurrency(cx, s, d.max_concurrency);
    ok.then(|| StepKind::Dag {
        steps,
        depends_on,
        fail_fast: d.fail_fast.unwrap_or(true),
        max_concurrency: d.max_concurrency,
    })
}

/// The steps of dag `dag` that step `node` depends on, directly or not.
pub(super) fn dag_before(w: &Workflow, dag: &str, node: &str) -> HashSet<String> {
    let Some(StepKind::Dag { steps, depends_on, .. }) = w.step(dag).map(|d| &d.kind) else { return HashSet::new() };
    let mut out = HashSet::new();
    let mut stack: Vec<usize> = steps.iter().position(|x| x.id == node).into_iter().collect();
    while let Some(v) = stack.pop() {
        for &u in &depends_on[v] {
            if out.insert(steps[u].id.clone()) {
                stack.push(u);
            }
        }
    }
    out
}

/// A cycle of `deps` (step → the steps it depends on): its steps, each
/// depending on the next and the last on the first.
fn dag_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0: unseen, 1: on the path, 2: done.
    fn visit(v: usize, deps: &[Vec<usize>], mark: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        mark[v] = 1;
        path.push(v);
        for &u in &deps[v] {
            match mark[u] {
                1 => {
                    let from = path.iter().position(|&p| p == u).unwrap_or(0);
                    return Some(path[from..].to_vec());
                }
                0 => {
                    if let Some(c) = visit(u, deps, mark, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark[v] = 2;
        None
    }
    let mut mark = vec![0u8; deps.len()];
    (0..deps.len()).find_map(|v| if mark[v] == 0 { visit(v, deps, &mut mark, &mut Vec::new()) } else { None })
}
