//! Guided authoring on the command line: `cairn new` (a workflow from a
//! template), `cairn graph` (Mermaid, DOT or SVG) and `cairn explain` (what
//! each step reads and produces, the fields available downstream, and the
//! reads a contract does not guarantee, with a fix).

use std::fmt::Write as _;
use std::process::ExitCode;

use cairn_runtime::{Step, StepKind, TaskRegistry, Workflow};
use serde_json::{Value, json};

use crate::codes;

/// The templates of `cairn new`: name, what it is, the YAML (`NAME` is
/// replaced by the workflow's name).
const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "ai-approval",
        "an AI drafts JSON checked against a contract (retried with the errors), a person approves, an HTTP call publishes",
        include_str!("../../templates/ai-approval.yaml"),
    ),
    (
        "saga",
        "steps that each have a compensation, undone in reverse order when a later step fails",
        include_str!("../../templates/saga.yaml"),
    ),
    (
        "fan-out",
        "a map over a list of items, a step per item, at most N at once, results gathered",
        include_str!("../../templates/fan-out.yaml"),
    ),
    (
        "scheduled-report",
        "a report assembled from an HTTP source and summarised by AI, meant for a schedule (cairn schedules create)",
        include_str!("../../templates/scheduled-report.yaml"),
    ),
];

/// Arguments of `cairn new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The template (`cairn new --list` shows them).
    #[arg(required_unless_present = "list")]
    pub template: Option<String>,
    /// The workflow's name (default: the template's).
    pub name: Option<String>,
    /// Write it to this file (default: NAME.yaml); `-` for stdout.
    #[arg(long, short)]
    pub output: Option<String>,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
    /// List the templates.
    #[arg(long)]
    pub list: bool,
}

/// `cairn new`.
pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for (name, what, _) in TEMPLATES {
            out!("{name:<17} {what}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = args.template.unwrap_or_default();
    let Some((template, _, yaml)) = TEMPLATES.iter().find(|(n, ..)| *n == wanted) else {
        let names: Vec<&str> = TEMPLATES.iter().map(|(n, ..)| *n).collect();
        eprintln!("error: no template `{wanted}`; the templates are {}", names.join(", "));
        return Ok(codes::exit("usage"));
    };
    let name = args.name.unwrap_or_else(|| (*template).to_owned());
    let text = yaml.replace("NAME", &name);
    // What is written always validates: a name the language refuses is said so.
    if let Err(d) = cairn_runtime::lang::parse(&text, "new.yaml", &TaskRegistry::builtin().names()) {
        let why: Vec<String> = d.0.iter().map(|x| x.message.clone()).collect();
        eprintln!("error: `{name}` cannot name a workflow: {}", why.join("; "));
        return Ok(codes::exit("usage"));
    }
    let file = args.output.unwrap_or_else(|| format!("{name}.yaml"));
    if file == "-" {
        out!("{}", text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let path = std::path::Path::new(&file);
    if path.exists() && !args.force {
        eprintln!("error: {file} exists; choose another with --output, or add --force to replace it");
        return Ok(codes::exit("usage"));
    }
    std::fs::write(path, &text).map_err(|e| anyhow::anyhow!("cannot write {file}: {e}"))?;
    out!("wrote {file} ({template}); next: cairn validate {file}, cairn graph {file}, cairn run {file}");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `cairn graph`.
#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// A workflow file.
    pub file: std::path::PathBuf,
    /// `mermaid` (default), `dot` (Graphviz) or `svg` (drawn as the console does).
    #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "dot", "svg"])]
    pub format: String,
}

/// Arguments of `cairn explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A workflow file.
    pub file: std::path::PathBuf,
    /// `text` (default) or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// The workflow in `file`, or the diagnostics printed and the exit code.
fn load(file: &std::path::Path) -> Result<Workflow, ExitCode> {
    let name = file.display().to_string();
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {name}: {e}");
            return Err(codes::exit("usage"));
        }
    };
    let tasks = TaskRegistry::builtin();
    cairn_runtime::lang::parse(&src, &name, &tasks.names()).map_err(|d| {
        for x in &d.0 {
            eprintln!("{x}");
        }
        eprintln!("fix these first (cairn validate {name})");
        codes::exit("invalid-definition")
    })
}

/// `cairn graph`.
pub fn graph(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let w = match load(&args.file) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let text = match args.format.as_str() {
        "dot" => dot(&w),
        "svg" => crate::serve::graph::svg_document(&w),
        _ => mermaid(&w),
    };
    out!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

/// A node id from a step's path (letters, digits and `_` only).
fn node_id(path: &str) -> String {
    let mut id = String::from("s_");
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else {
            let _ = write!(id, "_{:x}_", u32::from(c));
        }
    }
    id
}

/// Where control goes from a step: the target's path (`None`: the
/// sequence's end) and the edge's label.
type Edge = (Option<String>, &'static str);

/// The step and where control goes from it, for each step of a sequence:
/// (path, step, its edges).
fn edges<'a>(steps: &'a [Step], prefix: &str) -> Vec<(String, &'a Step, Vec<Edge>)> {
    let path = |s: &Step| format!("{prefix}{}", s.id);
    steps
        .iter()
        .map(|s| {
            let labels: Vec<&'static str> = match &s.kind {
                StepKind::Branch { .. } => vec!["then", "otherwise"],
                _ => Vec::new(),
            };
            let to = crate::serve::graph::targets(steps, s)
                .into_iter()
                .enumerate()
                .map(|(i, t)| (steps.get(t).map(path), labels.get(i).copied().unwrap_or("")))
                .collect();
            (path(s), s, to)
        })
        .collect()
}

/// An edge to draw: from and to node ids, its label, whether it is a
/// `catch` (drawn dashed).
struct Link {
    from: String,
    to: String,
    label: &'static str,
    caught: bool,
}

/// The edges of a sequence, with `end` the node its end goes to (none
/// inside a container: its sequence flows out of the container).
fn links(steps: &[Step], prefix: &str, end: Option<&str>) -> Vec<Link> {
    let mut out = Vec::new();
    for (path, s, to) in edges(steps, prefix) {
        for (t, label) in to {
            let target = match (&t, end) {
                (Some(p), _) => node_id(p),
                (None, Some(e)) => e.to_owned(),
                (None, None) => continue,
            };
            let caught =
                s.catch.iter().any(|c| Some(c.next.name()) == t.as_deref().map(|p| p.rsplit('.').next().unwrap_or(p)));
            out.push(Link { from: node_id(&path), to: target, label, caught });
        }
    }
    out
}

/// Mermaid (`flowchart TD`): a node per step, a subgraph per container
/// (a `parallel`'s branches side by side, a `map`'s steps once, a `dag`
/// with its dependencies), and the end.
pub fn mermaid(w: &Workflow) -> String {
    let mut o = String::from("flowchart TD\n");
    let q = |s: &str| s.replace('"', "#quot;");
    fn seq(o: &mut String, steps: &[Step], prefix: &str, end: Option<&str>, depth: usize, q: &dyn Fn(&str) -> String) {
        let pad = "  ".repeat(depth);
        for (path, s, _) in edges(steps, prefix) {
            let id = node_id(&path);
            match &s.kind {
                StepKind::Parallel { branches, .. } => {
                    let _ = writeln!(o, "{pad}subgraph {id}[\"{} (parallel)\"]", q(&s.id));
                    for (name, inner) in branches {
                        let bp = format!("{path}.{name}.");
                        let _ = writeln!(o, "{pad}  subgraph {}[\"{}\"]", node_id(&bp), q(name));
                        seq(o, inner, &bp, None, depth + 2, q);
                        let _ = writeln!(o, "{pad}  end");
                    }
                    let _ = writeln!(o, "{pad}end");
                }
                StepKind::Map { steps: inner, .. } => {
                    let _ = writeln!(o, "{pad}subgraph {id}[\"{} (map: each item)\"]", q(&s.id));
                    seq(o, inner, &format!("{path}[]."), None, depth + 1, q);
                    let _ = writeln!(o, "{pad}end");
                }
                StepKind::Dag { steps: inner, depends_on, .. } => {
                    let _ = writeln!(o, "{pad}subgraph {id}[\"{} (dag)\"]", q(&s.id));
                    let ip = format!("{path}.");
                    for x in inner {
                        let _ = writeln!(
                            o,
                            "{pad}  {}[\"{}<br/><i>{}</i>\"]",
                            node_id(&format!("{ip}{}", x.id)),
                            q(&x.id),
                            x.kind.name()
                        );
                    }
                    for (j, deps) in depends_on.iter().enumerate() {
                        for &i in deps {
                            if let (Some(a), Some(b)) = (inner.get(i), inner.get(j)) {
                                let _ = writeln!(
                                    o,
                                    "{pad}  {} --> {}",
                                    node_id(&format!("{ip}{}", a.id)),
                                    node_id(&format!("{ip}{}", b.id))
                                );
                            }
                        }
                    }
                    let _ = writeln!(o, "{pad}end");
                }
                kind => {
                    let _ = writeln!(o, "{pad}{id}[\"{}<br/><i>{}</i>\"]", q(&s.id), kind.name());
                }
            }
        }
        for l in links(steps, prefix, end) {
            let label = if l.caught && l.label.is_empty() { "on error" } else { l.label };
            let arrow = if l.caught { "-.->" } else { "-->" };
            if label.is_empty() {
                let _ = writeln!(o, "{pad}{} {arrow} {}", l.from, l.to);
            } else {
                let _ = writeln!(o, "{pad}{} {arrow}|{label}| {}", l.from, l.to);
            }
        }
    }
    seq(&mut o, &w.steps, "", Some("s_end"), 1, &q);
    let _ = writeln!(o, "  s_end((end))");
    o
}

/// Graphviz DOT: a box per step, a cluster per container (entered through
/// a node named after it), the end.
pub fn dot(w: &Workflow) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut o = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n",
        q(&w.name)
    );
    fn seq(o: &mut String, steps: &[Step], prefix: &str, end: Option<&str>, q: &dyn Fn(&str) -> String) {
        for (path, s, _) in edges(steps, prefix) {
            let id = node_id(&path);
            let _ = writeln!(o, "  {id} [label=\"{}\\n({})\"];", q(&s.id), s.kind.name());
            let cluster = |o: &mut String, name: &str, label: &str, inner: &[Step], ip: &str| {
                let cid = node_id(name);
                let _ = writeln!(o, "  subgraph cluster_{cid} {{\n  label=\"{}\";", q(label));
                seq(o, inner, ip, None, q);
                let _ = writeln!(o, "  }}");
                if let Some(first) = inner.first() {
                    let _ = writeln!(o, "  {id} -> {};", node_id(&format!("{ip}{}", first.id)));
                }
            };
            match &s.kind {
                StepKind::Parallel { branches, .. } => {
                    for (name, inner) in branches {
                        let bp = format!("{path}.{name}.");
                        cluster(o, &bp, name, inner, &bp);
                    }
                }
                StepKind::Map { steps: inner, .. } => {
                    let ip = format!("{path}[].");
                    cluster(o, &ip, "each item", inner, &ip);
                }
                StepKind::Dag { steps: inner, depends_on, .. } => {
                    let ip = format!("{path}.");
                    let cid = node_id(&ip);
                    let _ = writeln!(o, "  subgraph cluster_{cid} {{\n  label=\"dag\";");
                    for x in inner {
                        let _ = writeln!(
                            o,
                            "  {} [label=\"{}\\n({})\"];",
                            node_id(&format!("{ip}{}", x.id)),
                            q(&x.id),
                            x.kind.name()
                        );
                    }
                    let _ = writeln!(o, "  }}");
                    for (j, deps) in depends_on.iter().enumerate() {
                        let b = inner.get(j).map(|b| node_id(&format!("{ip}{}", b.id)));
                        if deps.is_empty()
                            && let Some(b) = &b
                        {
                            let _ = writeln!(o, "  {id} -> {b};");
                        }
                        for &i in deps {
                            if let (Some(a), Some(b)) = (inner.get(i), &b) {
                                let _ = writeln!(o, "  {} -> {b};", node_id(&format!("{ip}{}", a.id)));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for l in links(steps, prefix, end) {
            let mut attrs = Vec::new();
            if !l.label.is_empty() {
                attrs.push(format!("label=\"{}\"", l.label));
            }
            if l.caught {
                attrs.push("style=dashed".into());
            }
            let attrs = if attrs.is_empty() { String::new() } else { format!(" [{}]", attrs.join(", ")) };
            let _ = writeln!(o, "  {} -> {}{attrs};", l.from, l.to);
        }
    }
    seq(&mut o, &w.steps, "", Some("s_end"), &q);
    o.push_str("  s_end [label=\"end\", shape=circle];\n}\n");
    o
}

/// What each top-level step reads, produces and has available, and the
/// reads a contract does not guarantee: `cairn explain`, and the contracts
/// resource of `cairn mcp`.
pub fn explain(w: &Workflow) -> Value {
    let mut available: Vec<String> = match &w.inputs_schema {
        Some(s) => {
            s["properties"].as_object().map(|p| p.keys().map(|k| format!("inputs.{k}")).collect()).unwrap_or_default()
        }
        None => Vec::new(),
    };
    let contracts: std::collections::BTreeMap<&str, Option<&Value>> =
        w.steps.iter().map(|s| (s.id.as_str(), s.output_contract.as_ref())).collect();
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for s in &w.steps {
        for (id, field) in &s.reads.fields {
            let read = format!("steps.{id}.output.{field}");
            let kinds = w.steps.iter().find(|x| &x.id == id).map(|x| &x.kind);
            let problem = match contracts.get(id.as_str()) {
                // An HTTP step's output always has these.
                _ if matches!(kinds, Some(StepKind::Http { .. }))
                    && ["status", "headers", "body"].contains(&field.as_str()) =>
                {
                    None
                }
                Some(Some(c)) => {
                    let required =
                        c["required"].as_array().is_some_and(|r| r.iter().any(|x| x.as_str() == Some(field)));
                    (!required).then(|| {
                        (
                            "likely",
                            format!("the output contract of `{id}` declares `{field}` but does not require it: a run may lack it"),
                            format!("add `{field}` to `required` in the output contract of `{id}`, or read it with a default: `{{{{ {read} | default('') }}}}`"),
                        )
                    })
                }
                Some(None) => Some((
                    "possible",
                    format!("`{id}` has no output contract: nothing checks that its output has `{field}`"),
                    format!(
                        "give `{id}` an output_contract that requires `{field}` (an AI step is then retried until it does)"
                    ),
                )),
                None => None,
            };
            if let Some((confidence, message, fix)) = problem {
                problems.push(
                    json!({ "step": s.id, "reads": read, "confidence": confidence, "message": message, "fix": fix }),
                );
            }
        }
        let produces = match &s.output_contract {
            Some(c) => match c["properties"].as_object() {
                Some(p) => p
                    .keys()
                    .map(|k| {
                        let required =
                            c["required"].as_array().is_some_and(|r| r.iter().any(|x| x.as_str() == Some(k)));
                        format!("steps.{}.output.{k}{}", s.id, if required { "" } else { " (optional)" })
                    })
                    .collect(),
                None => vec![format!("steps.{}.output (checked by its contract)", s.id)],
            },
            None => vec![format!("steps.{}.output ({}, no contract)", s.id, produced_by(&s.kind))],
        };
        steps.push(json!({
            "id": s.id,
            "kind": s.kind.name(),
            "output_contract": s.output_contract,
            "reads": {
                "steps": s.reads.steps,
                "fields": s.reads.fields.iter().map(|(i, f)| format!("steps.{i}.output.{f}")).collect::<Vec<_>>(),
                "inputs": s.reads.inputs,
                "everything": s.reads.all,
            },
            "produces": produces,
            "available": available,
            "not_guaranteed": problems.iter().filter(|p| p["step"] == s.id.as_str()).map(|p| p["reads"].clone()).collect::<Vec<_>>(),
        }));
        match s.output_contract.as_ref().and_then(|c| c["properties"].as_object()) {
            Some(p) => available.extend(p.keys().map(|k| format!("steps.{}.output.{k}", s.id))),
            None => available.push(format!("steps.{}.output", s.id)),
        }
    }
    json!({ "workflow": w.name, "steps": steps, "problems": problems })
}

/// What a step's output is when it has no contract.
fn produced_by(kind: &StepKind) -> &'static str {
    match kind {
        StepKind::Task { .. } => "what the task returns",
        StepKind::Transform { .. } => "the transform's value",
        StepKind::Http { .. } => "status, headers and body of the response",
        StepKind::Parallel { .. } => "each branch's output by name",
        StepKind::Map { .. } => "the list of each item's output",
        StepKind::Dag { .. } => "each step's output by id",
        _ => "its result",
    }
}

/// `cairn explain`.
pub fn explain_command(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let w = match load(&args.file) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let e = explain(&w);
    if args.format == "json" {
        out!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = |v: &Value| {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    };
    out!("workflow {}", w.name);
    for s in e["steps"].as_array().into_iter().flatten() {
        out!("\n{} ({})", s["id"].as_str().unwrap_or(""), s["kind"].as_str().unwrap_or(""));
        let reads = [list(&s["reads"]["fields"]), list(&s["reads"]["inputs"])]
            .into_iter()
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>();
        let reads =
            if s["reads"]["everything"] == true { "all inputs and outputs".to_owned() } else { reads.join(", ") };
        out!("  reads      {}", if reads.is_empty() { "nothing" } else { &reads });
        out!("  produces   {}", list(&s["produces"]));
        let avail = list(&s["available"]);
        out!("  available  {}", if avail.is_empty() { "nothing yet" } else { &avail });
    }
    let problems = e["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        out!("\nno mapping problems: every field read is required by a contract");
    } else {
        out!("\nmapping problems:");
        for p in &problems {
            out!(
                "  {} reads {} ({}): {}\n    fix: {}",
                p["step"].as_str().unwrap_or(""),
                p["reads"].as_str().unwrap_or(""),
                p["confidence"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or(""),
                p["fix"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
