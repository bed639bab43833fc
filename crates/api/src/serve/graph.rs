//! A workflow drawn as a graph (SVG, no script), with each step's state in
//! a run: the console's run, workflow and editor pages.
//!
//! Steps are boxes in the order written, one under the other; an arrow goes
//! to the next step written and a curve on the right to any other target
//! (a `next`, a branch's or a switch's, the end). A `parallel` is a frame
//! with its branches side by side; a `map` is a frame around the steps each
//! item runs, drawn once, with how many of its iterations stand where; a
//! `dag` is a frame with its steps in rows by how many steps stand before
//! them, an arrow from each step to each step that depends on it. A
//! table under the drawing says the same for screen readers and copying.
//!
//! The layout is measured first (every sequence's width and height, from
//! the inside out) and drawn second, so a frame always holds what it
//! contains.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use cairn_events::RecordedEvent;
use cairn_runtime::run::{RunState, bare};
use cairn_runtime::{Step, StepKind, Target, Workflow};

use super::pages::esc;

const BOX_W: f64 = 240.0;
const BOX_H: f64 = 46.0;
/// Between two steps of a sequence (room for the arrow).
const GAP: f64 = 30.0;
/// Inside a frame, around what it holds.
const PAD: f64 = 12.0;
/// A frame's heading.
const HEAD: f64 = 46.0;
/// A branch's name above its column.
const LABEL: f64 = 22.0;
/// Between two branches.
const COL_GAP: f64 = 18.0;
/// On the right of a sequence whose steps jump, for the curves.
const JUMPS: f64 = 46.0;

/// What one state is called and how it is drawn, most telling first: a
/// `map`'s box takes the first of its iterations' states in this order.
const ORDER: [&str; 9] =
    ["failed", "waiting", "running", "retrying", "caught", "stopped", "completed", "skipped", "not-reached"];

/// How a run stands at each step of its definition.
struct Progress<'a> {
    /// States of the step's instances (one outside map iterations, one per
    /// iteration inside them), by step id.
    states: HashMap<String, Vec<&'static str>>,
    /// Visits and highest attempt, summed and maxed over the instances.
    visits: HashMap<&'a str, (u32, u32)>,
    /// Items of a map, over its instances.
    items: HashMap<&'a str, usize>,
    /// Whether the run has ended.
    ended: bool,
}

impl<'a> Progress<'a> {
    fn new(st: &'a RunState, events: &[RecordedEvent]) -> Self {
        // Each instance's last lifecycle event, from the log in one pass.
        let mut last: BTreeMap<String, &'static str> = BTreeMap::new();
        for e in events {
            let kind = match e.event_type.as_str() {
                "StepCompleted" | "StepKept" => "completed",
                "StepSkipped" => "skipped",
                "StepFailed" => "failed",
                "RetryScheduled" => "retrying",
                "ErrorCaught" => "caught",
                "StepStarted" | "TimerStarted" => "started",
                _ => continue,
            };
            let payload = e.payload_value().unwrap_or_default();
            if let Some(step) = payload.get("step_id").and_then(|v| v.as_str()) {
                last.insert(step.to_owned(), kind);
            }
        }
        let ended = st.status.is_terminal();
        let waiting: Vec<&str> = st.waiting_for_people().into_iter().map(|(i, _)| i).collect();
        let failed_at = st.error.as_ref().and_then(|(_, _, step)| step.as_deref());
        let mut states: HashMap<String, Vec<&'static str>> = HashMap::new();
        for (inst, kind) in &last {
            let state = if failed_at == Some(inst.as_str()) {
                "failed"
            } else if waiting.contains(&inst.as_str()) {
                "waiting"
            } else if st.in_flight(inst) {
                "running"
            } else {
                match (*kind, ended) {
                    ("completed", _) => "completed",
                    ("skipped", _) => "skipped",
                    ("caught", _) => "caught",
                    ("failed", _) | ("retrying", true) => "failed",
                    ("retrying", false) => "retrying",
                    (_, false) => "running",
                    (_, true) => "stopped",
                }
            };
            states.entry(bare(inst).to_owned()).or_default().push(state);
        }
        let mut visits: HashMap<&str, (u32, u32)> = HashMap::new();
        for (inst, v) in &st.visits {
            visits.entry(bare(inst)).or_default().0 += v;
        }
        for (inst, a) in &st.attempts {
            let e = visits.entry(bare(inst)).or_default();
            e.1 = e.1.max(*a);
        }
        let mut items: HashMap<&str, usize> = HashMap::new();
        for (inst, list) in &st.map_items {
            *items.entry(bare(inst)).or_default() += list.as_array().map_or(0, Vec::len);
        }
        Progress { states, visits, items, ended }
    }

    /// The step's state for drawing, and what its box says of it.
    fn of(&self, id: &str) -> (&'static str, String) {
        let Some(all) = self.states.get(id) else { return ("not-reached", "not reached".to_owned()) };
        let top = ORDER.iter().find(|s| all.contains(s)).copied().unwrap_or("not-reached");
        if all.len() == 1 {
            return (top, top.replace('-', " "));
        }
        // Several instances: the iterations of a map around it.
        let counts: Vec<String> = ORDER
            .iter()
            .filter_map(|s| {
                let n = all.iter().filter(|x| *x == s).count();
                (n > 0).then(|| format!("{n} {}", s.replace('-', " ")))
            })
            .collect();
        (top, counts.join(", "))
    }
}

/// A sequence of steps, measured.
struct Seq<'a> {
    nodes: Vec<Node<'a>>,
    /// The widest node.
    inner: f64,
    /// With room for the curves on the right, when some step jumps.
    w: f64,
    h: f64,
}

struct Node<'a> {
    step: &'a Step,
    shape: Shape<'a>,
    w: f64,
    h: f64,
}

enum Shape<'a> {
    Box,
    Parallel(Vec<(&'a str, Seq<'a>)>),
    Map(Seq<'a>),
    /// Rows of a dag's steps (index in its steps, measured), each row
    /// depending only on rows above it.
    Dag(Vec<Vec<(usize, Node<'a>)>>),
}

fn measure(steps: &[Step]) -> Seq<'_> {
    let nodes: Vec<Node> = steps.iter().map(measure_one).collect();
    let inner = nodes.iter().map(|n| n.w).fold(BOX_W, f64::max);
    let h = nodes.iter().map(|n| n.h).sum::<f64>() + GAP * nodes.len().saturating_sub(1) as f64;
    let jumps = steps.iter().enumerate().any(|(i, s)| targets(steps, s).iter().any(|t| *t != i + 1));
    Seq { nodes, inner, w: inner + if jumps { JUMPS } else { 0.0 }, h }
}

fn measure_one(step: &Step) -> Node<'_> {
    match &step.kind {
        StepKind::Parallel { branches, .. } => {
            let cols: Vec<(&str, Seq)> = branches.iter().map(|(n, s)| (n.as_str(), measure(s))).collect();
            let w = cols.iter().map(|(_, c)| c.w).sum::<f64>() + COL_GAP * cols.len().saturating_sub(1) as f64;
            let h = cols.iter().map(|(_, c)| c.h).fold(0.0, f64::max);
            Node { step, w: (w + 2.0 * PAD).max(BOX_W), h: HEAD + LABEL + h + PAD, shape: Shape::Parallel(cols) }
        }
        StepKind::Map { steps, .. } => {
            let body = measure(steps);
            Node { step, w: (body.w + 2.0 * PAD).max(BOX_W), h: HEAD + body.h + PAD, shape: Shape::Map(body) }
        }
        StepKind::Dag { steps, depends_on, .. } => {
            // A step's row: one past the lowest row of what it depends on.
            let mut row = vec![0usize; steps.len()];
            for _ in 0..steps.len() {
                for (i, d) in depends_on.iter().enumerate() {
                    row[i] = d.iter().map(|&j| row[j] + 1).max().unwrap_or(0);
                }
            }
            let mut rows: Vec<Vec<(usize, Node)>> = Vec::new();
            for (i, st) in steps.iter().enumerate() {
                if rows.len() <= row[i] {
                    rows.resize_with(row[i] + 1, Vec::new);
                }
                rows[row[i]].push((i, measure_one(st)));
            }
            let width = |r: &Vec<(usize, Node)>| {
                r.iter().map(|(_, n)| n.w).sum::<f64>() + COL_GAP * r.len().saturating_sub(1) as f64
            };
            let w = rows.iter().map(width).fold(0.0, f64::max);
            let h = rows.iter().map(|r| r.iter().map(|(_, n)| n.h).fold(0.0, f64::max)).sum::<f64>()
                + GAP * rows.len().saturating_sub(1) as f64;
            Node { step, w: (w + 2.0 * PAD).max(BOX_W), h: HEAD + h + PAD, shape: Shape::Dag(rows) }
        }
        _ => Node { step, w: BOX_W, h: BOX_H, shape: Shape::Box },
    }
}

/// Where control may go after a step: indexes in its sequence
/// (`steps.len()` for the end of the sequence).
pub(crate) fn targets(steps: &[Step], s: &Step) -> Vec<usize> {
    let idx = |t: &Target| match t {
        Target::End => Some(steps.len()),
        Target::Step(id) => steps.iter().position(|x| &x.id == id),
    };
    let mut all: Vec<Option<usize>> = match &s.kind {
        StepKind::Branch { then, otherwise, .. } => vec![idx(then), idx(otherwise)],
        StepKind::Switch { cases, default } => cases.iter().map(|(_, t)| idx(t)).chain([idx(default)]).collect(),
        StepKind::Fail { .. } => Vec::new(),
        _ => vec![idx(&s.then)],
    };
    all.extend(s.catch.iter().map(|c| idx(&c.next)));
    let mut seen = Vec::new();
    for t in all.into_iter().flatten() {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen
}

struct Drawing<'a> {
    svg: String,
    rows: String,
    summary: Vec<String>,
    run: Option<Progress<'a>>,
    curves: usize,
}

impl Drawing<'_> {
    fn state(&self, id: &str) -> (&'static str, String) {
        self.run.as_ref().map_or(("plain", String::new()), |p| p.of(id))
    }

    /// Draws a sequence with its top-left corner at `(x, y)`; `end` is
    /// where an arrow to the sequence's end points (the run's end at the
    /// top level, nowhere inside a frame).
    fn seq(&mut self, seq: &Seq, steps: &[Step], x: f64, y: f64, path: &str, end: Option<f64>) {
        let cx = x + seq.inner / 2.0;
        let mut tops = Vec::with_capacity(seq.nodes.len());
        let mut at = y;
        for n in &seq.nodes {
            tops.push(at);
            at += n.h + GAP;
        }
        for (i, n) in seq.nodes.iter().enumerate() {
            self.node(n, cx - n.w / 2.0, tops[i], path);
        }
        for (i, n) in seq.nodes.iter().enumerate() {
            let from = tops[i] + n.h;
            for t in targets(steps, n.step) {
                let to = if t == steps.len() {
                    match end {
                        Some(e) => e,
                        None if t == i + 1 => continue,
                        None => y + seq.h,
                    }
                } else {
                    tops[t]
                };
                if t == i + 1 {
                    let _ = write!(
                        self.svg,
                        "<line class=\"edge\" x1=\"{cx}\" y1=\"{from}\" x2=\"{cx}\" y2=\"{}\" marker-end=\"url(#arrow)\"></line>",
                        to - 2.0
                    );
                } else {
                    self.curves += 1;
                    let right = cx + n.w / 2.0;
                    let goal = if t == steps.len() { cx + 60.0 } else { cx + seq.nodes[t].w / 2.0 };
                    let bulge = x + seq.inner + 18.0 + 8.0 * (self.curves % 4) as f64;
                    let y1 = tops[i] + BOX_H.min(n.h) / 2.0;
                    let y2 = if t == steps.len() { to + 12.0 } else { to + BOX_H.min(seq.nodes[t].h) / 2.0 };
                    let _ = write!(
                        self.svg,
                        "<path class=\"edge jump\" d=\"M {right} {y1} C {bulge} {y1}, {bulge} {y2}, {} {y2}\" marker-end=\"url(#arrow)\"></path>",
                        goal + 2.0
                    );
                }
            }
        }
    }

    /// A frame stands as the most telling of its own state and its steps'
    /// (a parallel with a branch waiting for an approval is waiting).
    fn frame_state(&self, step: &Step, own: &'static str) -> &'static str {
        let mut all = vec![own];
        let mut stack: Vec<&Step> = vec![step];
        while let Some(s) = stack.pop() {
            let inner: Vec<&Step> = match &s.kind {
                StepKind::Parallel { branches, .. } => branches.iter().flat_map(|(_, b)| b).collect(),
                StepKind::Map { steps, .. } | StepKind::Dag { steps, .. } => steps.iter().collect(),
                _ => Vec::new(),
            };
            for i in inner {
                all.push(self.state(&i.id).0);
                stack.push(i);
            }
        }
        ORDER.iter().find(|s| all.contains(s)).copied().unwrap_or(own)
    }

    fn node(&mut self, n: &Node, x: f64, y: f64, path: &str) {
        let s = n.step;
        let (mut state, mut said) = self.state(&s.id);
        if !matches!(n.shape, Shape::Box) && state != "plain" {
            let framed = self.frame_state(s, state);
            if framed != state && !said.contains(',') {
                said = framed.replace('-', " ");
            }
            state = framed;
        }
        let (visits, attempts) = self.run.as_ref().and_then(|p| p.visits.get(s.id.as_str()).copied()).unwrap_or((0, 0));
        let items = self.run.as_ref().and_then(|p| p.items.get(s.id.as_str()).copied());
        let mut sub = s.kind.name().to_owned();
        if let Some(n) = items {
            let _ = write!(sub, " · {n} item{}", if n == 1 { "" } else { "s" });
        }
        if !said.is_empty() {
            let _ = write!(sub, " · {said}");
        }
        let iterated = said.contains(|c: char| c.is_ascii_digit());
        if matches!(n.shape, Shape::Box) && !iterated && (visits > 1 || attempts > 1) {
            let _ = write!(sub, " · visits {visits}, attempts {attempts}");
        }
        let frame = if matches!(n.shape, Shape::Box) { "" } else { " frame" };
        let _ = write!(
            self.svg,
            "<g class=\"node{frame} state-{state}\"><rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" rx=\"6\"></rect>\
             <text x=\"{}\" y=\"{}\" class=\"id\">{}</text><text x=\"{}\" y=\"{}\" class=\"sub\">{}</text></g>",
            n.w,
            n.h,
            x + 10.0,
            y + 19.0,
            esc(&s.id),
            x + 10.0,
            y + 36.0,
            esc(&sub)
        );
        let shown = if said.is_empty() { "—".to_owned() } else { said };
        let _ = write!(
            self.rows,
            "<tr><td><code>{}{}</code></td><td>{}</td><td class=\"state-{state}\">{}</td><td>{visits}</td><td>{attempts}</td></tr>",
            esc(path),
            esc(&s.id),
            s.kind.name(),
            esc(&shown)
        );
        if state != "plain" {
            self.summary.push(format!("{}{} {shown}", path, s.id));
        }
        match (&n.shape, &s.kind) {
            (Shape::Parallel(cols), StepKind::Parallel { branches, .. }) => {
                let mut cx = x + PAD;
                for ((name, col), (_, steps)) in cols.iter().zip(branches) {
                    let _ = write!(
                        self.svg,
                        "<text x=\"{}\" y=\"{}\" class=\"branch\">{}</text>",
                        cx,
                        y + HEAD + 14.0,
                        esc(name)
                    );
                    self.seq(col, steps, cx, y + HEAD + LABEL, &format!("{path}{} › {name} › ", s.id), None);
                    cx += col.w + COL_GAP;
                }
            }
            (Shape::Map(body), StepKind::Map { steps, .. }) => {
                self.seq(body, steps, x + PAD, y + HEAD, &format!("{path}{}[each] › ", s.id), None);
            }
            (Shape::Dag(rows), StepKind::Dag { depends_on, .. }) => {
                // Each step's top centre and bottom centre, for the arrows.
                let mut at: HashMap<usize, (f64, f64, f64)> = HashMap::new();
                let inner = format!("{path}{} › ", s.id);
                let mut top = y + HEAD;
                for r in rows {
                    let width = r.iter().map(|(_, m)| m.w).sum::<f64>() + COL_GAP * r.len().saturating_sub(1) as f64;
                    let mut left = x + (n.w - width) / 2.0;
                    for (i, m) in r {
                        self.node(m, left, top, &inner);
                        at.insert(*i, (left + m.w / 2.0, top, top + m.h));
                        left += m.w + COL_GAP;
                    }
                    top += r.iter().map(|(_, m)| m.h).fold(0.0, f64::max) + GAP;
                }
                for (i, d) in depends_on.iter().enumerate() {
                    let Some(&(x2, y2, _)) = at.get(&i) else { continue };
                    for j in d {
                        let Some(&(x1, _, y1)) = at.get(j) else { continue };
                        let _ = write!(
                            self.svg,
                            "<line class=\"edge\" x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{}\" marker-end=\"url(#arrow)\"></line>",
                            y2 - 2.0
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// The workflow's steps as a graph (SVG) and a table; with a run, each
/// step coloured by its state and labelled with its visits and attempts.
pub(super) fn graph_html(w: &Workflow, run: Option<(&RunState, &[RecordedEvent])>) -> String {
    let (svg, summary, rows) = draw(w, run);
    format!(
        "<h2 id=\"graph-h\">Steps</h2><figure class=\"graph\">{svg}</figure>\
         <table class=\"steps\"><thead><tr><th scope=\"col\">Step</th><th scope=\"col\">Kind</th><th scope=\"col\">State</th><th scope=\"col\">Visits</th><th scope=\"col\">Attempts</th></tr></thead><tbody>{rows}</tbody></table>",
    )
    .replacen("<desc id=\"graph-d\">", &format!("<desc id=\"graph-d\">{}", esc(&summary)), 1)
}

/// The colours of the console's stylesheet, for a drawing on its own.
const STANDALONE_STYLE: &str = "svg.graph{background:#fff}\
.graph rect{fill:#fff;stroke:#4f5863;stroke-width:1.5}\
.graph text{font:13px system-ui,sans-serif;fill:#1b1f24}\
.graph text.id{font-weight:700}\
.graph text.branch{font-style:italic;fill:#4f5863}\
.graph .edge{stroke:#4f5863;stroke-width:1.5;fill:none}\
.graph marker path{fill:#4f5863}\
.graph .frame>rect{fill-opacity:.35}";

/// `cairn graph --format svg`: the workflow drawn as the console draws it,
/// as an SVG document with its own style (no script, no external file).
pub(crate) fn svg_document(w: &Workflow) -> String {
    let (svg, summary, _) = draw(w, None);
    let svg = svg
        .replacen("<svg ", "<svg class=\"graph\" ", 1)
        .replacen(
            "<desc id=\"graph-d\">",
            &format!("<title>{}</title><desc id=\"graph-d\">{}", esc(&w.name), esc(&summary)),
            1,
        )
        .replacen("<defs>", &format!("<style>{STANDALONE_STYLE}</style><defs>"), 1)
        .replace(" aria-labelledby=\"graph-h graph-d\"", " aria-labelledby=\"graph-d\"");
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{svg}\n")
}

/// The drawing (an `<svg>` element with an empty `<desc>`), its summary
/// and the table's rows.
fn draw(w: &Workflow, run: Option<(&RunState, &[RecordedEvent])>) -> (String, String, String) {
    let seq = measure(&w.steps);
    let (x, y) = (20.0, 10.0);
    let end_y = y + seq.h + GAP;
    let mut d = Drawing {
        svg: String::new(),
        rows: String::new(),
        summary: Vec::new(),
        run: run.map(|(st, events)| Progress::new(st, events)),
        curves: 0,
    };
    d.seq(&seq, &w.steps, x, y, "", Some(end_y));
    let ended = match &d.run {
        Some(p) if p.ended => "state-completed",
        Some(_) => "state-not-reached",
        None => "state-plain",
    };
    let cx = x + seq.inner / 2.0;
    let _ = write!(
        d.svg,
        "<g class=\"node end {ended}\"><rect x=\"{}\" y=\"{end_y}\" width=\"120\" height=\"24\" rx=\"12\"></rect><text x=\"{}\" y=\"{}\" class=\"sub\">end</text></g>",
        cx - 60.0,
        cx - 10.0,
        end_y + 16.0
    );
    let (width, height) = (x + seq.w + 40.0, end_y + 40.0);
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-labelledby=\"graph-h graph-d\">\
         <desc id=\"graph-d\"></desc><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\"></path></marker></defs>{}</svg>",
        d.svg
    );
    (svg, d.summary.join(", "), d.rows)
}
