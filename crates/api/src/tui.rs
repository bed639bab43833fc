//! `cairn tui`: runs, a run's steps and timeline, the resume plan with its
//! confirmation, and the inbox with form and approval answers, in a
//! terminal (ratatui). It acts on the local database as `--as`, through the
//! API's own router (as `cairn mcp` does), so an answer is validated and
//! refused exactly as over HTTP. The state and its drawing are pure
//! ([`App`]): keys give requests, answers change the state, and the tests
//! render it with ratatui's test backend. See docs/tui.md.

use std::time::{Duration, Instant};

use axum::http::Method;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use serde_json::{Map, Value, json};

use crate::local::Body;

/// The status filters, in the order `f` steps through them.
const FILTERS: &[Option<&str>] =
    &[None, Some("running"), Some("waiting"), Some("failed"), Some("completed"), Some("cancelled")];

/// What the app asks of the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Runs,
    Run(String),
    History(String),
    Inbox,
    Plan(String),
    Resume(String),
    Source { run: String, step: String, workflow: String, version: u64 },
    Definition { run: String, workflow: String, version: u64 },
    Decide { run: String, step: String, approve: bool, comment: String },
    Submit { run: String, step: String, values: Map<String, Value> },
}

impl Req {
    /// The request: method, path, body.
    fn http(&self, status: Option<&str>, workflow: &str) -> (Method, String, Option<Body>) {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        match self {
            Req::Runs => {
                let mut q = String::from("/runs?limit=200");
                if let Some(s) = status {
                    q.push_str(&format!("&status={s}"));
                }
                if !workflow.is_empty() {
                    q.push_str(&format!("&workflow={}", enc(workflow)));
                }
                (Method::GET, q, None)
            }
            Req::Run(id) => (Method::GET, format!("/runs/{id}"), None),
            Req::History(id) => (Method::GET, format!("/runs/{id}/history"), None),
            Req::Inbox => (Method::GET, "/inbox".into(), None),
            Req::Plan(id) => (Method::POST, format!("/runs/{id}/resume"), Some(Body::Json(json!({"dry_run": true})))),
            Req::Resume(id) => (
                Method::POST,
                format!("/runs/{id}/resume"),
                Some(Body::Json(json!({"reason": "resumed from cairn tui"}))),
            ),
            Req::Source { workflow, version, .. } | Req::Definition { workflow, version, .. } => {
                (Method::GET, format!("/workflows/{}/versions/{version}", enc(workflow)), None)
            }
            Req::Decide { run, step, approve, comment } => {
                let mut body = json!({ "approve": approve });
                if !comment.is_empty() {
                    body["comment"] = json!(comment);
                }
                (Method::POST, format!("/runs/{run}/steps/{}/decision", enc(step)), Some(Body::Json(body)))
            }
            Req::Submit { run, step, values } => (
                Method::POST,
                format!("/runs/{run}/steps/{}/submission", enc(step)),
                Some(Body::Json(json!({ "values": values }))),
            ),
        }
    }
}

/// The screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Runs,
    Run,
    Plan,
    Inbox,
    Answer,
}

/// A form field being filled in.
#[derive(Debug, Clone)]
pub struct FieldEdit {
    pub name: String,
    pub kind: String,
    pub label: String,
    pub required: bool,
    pub options: Vec<String>,
    pub value: String,
    pub error: Option<String>,
}

/// What the keys do after an answer.
pub enum Action {
    None,
    Quit,
    Send(Vec<Req>),
}

/// The whole state; drawn by [`App::draw`].
pub struct App {
    pub identity: String,
    pub screen: Screen,
    pub runs: Vec<Value>,
    pub filter: usize,
    pub workflow: String,
    /// Typing the workflow filter, a field or a comment.
    pub typing: Option<String>,
    pub selected: usize,
    pub run: Value,
    pub history: Vec<Value>,
    /// The run's definition as an indented list (depth, id, kind), for the
    /// step graph; with the run it is of.
    pub graph: (String, Vec<(usize, String, &'static str)>),
    pub plan_text: String,
    pub inbox: Vec<Value>,
    pub inbox_selected: usize,
    /// The inbox item being answered.
    pub answering: Value,
    pub fields: Vec<FieldEdit>,
    pub field_selected: usize,
    pub comment: String,
    pub message: Option<(bool, String)>,
    pub last_refresh: Option<Instant>,
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A time as `HH:MM:SS` (the day when not today is left to `cairn show`).
fn clock(t: &str) -> &str {
    t.get(11..19).unwrap_or(t)
}

fn status_style(status: &str) -> Style {
    match status {
        "completed" => Style::new().fg(Color::Green),
        "failed" | "rejected" => Style::new().fg(Color::Red),
        "waiting" => Style::new().fg(Color::Yellow),
        "running" | "started" => Style::new().fg(Color::Cyan),
        _ => Style::new(),
    }
}

impl App {
    pub fn new(identity: &str) -> App {
        App {
            identity: identity.to_owned(),
            screen: Screen::Runs,
            runs: Vec::new(),
            filter: 0,
            workflow: String::new(),
            typing: None,
            selected: 0,
            run: Value::Null,
            history: Vec::new(),
            graph: (String::new(), Vec::new()),
            plan_text: String::new(),
            inbox: Vec::new(),
            inbox_selected: 0,
            answering: Value::Null,
            fields: Vec::new(),
            field_selected: 0,
            comment: String::new(),
            message: None,
            last_refresh: None,
        }
    }

    /// What to read again now (every second on the live screens).
    pub fn refresh(&mut self, now: Instant) -> Vec<Req> {
        if self.last_refresh.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) || self.typing.is_some() {
            return Vec::new();
        }
        self.last_refresh = Some(now);
        match self.screen {
            Screen::Runs => vec![Req::Runs],
            Screen::Run => {
                let id = s(&self.run, "run_id");
                vec![Req::Run(id.clone()), Req::History(id)]
            }
            Screen::Inbox => vec![Req::Inbox],
            Screen::Plan | Screen::Answer => Vec::new(),
        }
    }

    fn selected_run(&self) -> Option<String> {
        self.runs.get(self.selected).map(|r| s(r, "run_id"))
    }

    /// A key: what it changes, and what to ask the API.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if let Some(buf) = &mut self.typing {
            match k.code {
                KeyCode::Char(c) => buf.push(c),
                KeyCode::Backspace => {
                    buf.pop();
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Enter => {
                    let text = self.typing.take().unwrap_or_default();
                    return self.typed(text);
                }
                _ => {}
            }
            return Action::None;
        }
        let back = matches!(k.code, KeyCode::Esc | KeyCode::Backspace);
        match (self.screen, k.code) {
            (_, KeyCode::Char('q')) => Action::Quit,
            (Screen::Runs, KeyCode::Down | KeyCode::Char('j')) => {
                self.selected = (self.selected + 1).min(self.runs.len().saturating_sub(1));
                Action::None
            }
            (Screen::Runs, KeyCode::Up | KeyCode::Char('k')) => {
                self.selected = self.selected.saturating_sub(1);
                Action::None
            }
            (Screen::Runs, KeyCode::Char('f')) => {
                self.filter = (self.filter + 1) % FILTERS.len();
                self.selected = 0;
                Action::Send(vec![Req::Runs])
            }
            (Screen::Runs, KeyCode::Char('/')) => {
                self.typing = Some(self.workflow.clone());
                Action::None
            }
            (Screen::Runs, KeyCode::Enter) => match self.selected_run() {
                Some(id) => {
                    self.screen = Screen::Run;
                    self.run = json!({ "run_id": id });
                    self.history.clear();
                    Action::Send(vec![Req::Run(id.clone()), Req::History(id)])
                }
                None => Action::None,
            },
            (Screen::Runs | Screen::Run, KeyCode::Char('i')) => {
                self.screen = Screen::Inbox;
                self.inbox_selected = 0;
                Action::Send(vec![Req::Inbox])
            }
            (Screen::Run, KeyCode::Char('p')) => Action::Send(vec![Req::Plan(s(&self.run, "run_id"))]),
            (Screen::Run | Screen::Inbox, _) if back => {
                self.screen = Screen::Runs;
                Action::Send(vec![Req::Runs])
            }
            (Screen::Plan, KeyCode::Char('y')) => Action::Send(vec![Req::Resume(s(&self.run, "run_id"))]),
            (Screen::Plan, KeyCode::Char('n')) | (Screen::Plan, _) if back || k.code == KeyCode::Char('n') => {
                self.screen = Screen::Run;
                self.message = Some((false, "not resumed: nothing was recorded".into()));
                Action::None
            }
            (Screen::Inbox, KeyCode::Down | KeyCode::Char('j')) => {
                self.inbox_selected = (self.inbox_selected + 1).min(self.inbox.len().saturating_sub(1));
                Action::None
            }
            (Screen::Inbox, KeyCode::Up | KeyCode::Char('k')) => {
                self.inbox_selected = self.inbox_selected.saturating_sub(1);
                Action::None
            }
            (Screen::Inbox, KeyCode::Enter) => {
                let Some(item) = self.inbox.get(self.inbox_selected).cloned() else { return Action::None };
                self.answering = item.clone();
                self.fields.clear();
                self.field_selected = 0;
                self.comment.clear();
                self.screen = Screen::Answer;
                // A form's fields come from its definition (the run names the version).
                let run = s(&item, "run_id");
                if s(&item, "kind") == "form" { Action::Send(vec![Req::Run(run)]) } else { Action::None }
            }
            (Screen::Answer, _) if back => {
                self.screen = Screen::Inbox;
                Action::Send(vec![Req::Inbox])
            }
            (Screen::Answer, KeyCode::Char('a' | 'x')) if s(&self.answering, "kind") == "approval" => {
                Action::Send(vec![Req::Decide {
                    run: s(&self.answering, "run_id"),
                    step: s(&self.answering, "step_id"),
                    approve: k.code == KeyCode::Char('a'),
                    comment: self.comment.clone(),
                }])
            }
            (Screen::Answer, KeyCode::Char('c')) => {
                self.typing = Some(self.comment.clone());
                Action::None
            }
            (Screen::Answer, KeyCode::Down | KeyCode::Char('j')) => {
                self.field_selected = (self.field_selected + 1).min(self.fields.len().saturating_sub(1));
                Action::None
            }
            (Screen::Answer, KeyCode::Up | KeyCode::Char('k')) => {
                self.field_selected = self.field_selected.saturating_sub(1);
                Action::None
            }
            (Screen::Answer, KeyCode::Enter) if !self.fields.is_empty() => {
                self.typing = Some(self.fields[self.field_selected].value.clone());
                Action::None
            }
            (Screen::Answer, KeyCode::Char('s')) if s(&self.answering, "kind") == "form" => match self.values() {
                Ok(values) => Action::Send(vec![Req::Submit {
                    run: s(&self.answering, "run_id"),
                    step: s(&self.answering, "step_id"),
                    values,
                }]),
                Err(()) => {
                    self.message = Some((true, "fix the fields marked ✗".into()));
                    Action::None
                }
            },
            _ => Action::None,
        }
    }

    /// What was typed: the workflow filter, a field's value or a comment.
    fn typed(&mut self, text: String) -> Action {
        match self.screen {
            Screen::Runs => {
                self.workflow = text.trim().to_owned();
                self.selected = 0;
                Action::Send(vec![Req::Runs])
            }
            Screen::Answer if !self.fields.is_empty() => {
                if let Some(f) = self.fields.get_mut(self.field_selected) {
                    f.value = text;
                    f.error = None;
                }
                Action::None
            }
            Screen::Answer => {
                self.comment = text;
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The form's values, typed as its fields say; a field that cannot be
    /// read is marked (the API checks the rest as on every surface).
    fn values(&mut self) -> Result<Map<String, Value>, ()> {
        let mut out = Map::new();
        let mut bad = false;
        for f in &mut self.fields {
            let v = f.value.trim();
            if v.is_empty() {
                continue;
            }
            let parsed = match f.kind.as_str() {
                "integer" => v.parse::<i64>().map(Value::from).map_err(|_| "a whole number".to_owned()),
                "number" => v.parse::<f64>().map(Value::from).map_err(|_| "a number".to_owned()),
                "boolean" => match v {
                    "y" | "yes" | "true" => Ok(Value::Bool(true)),
                    "n" | "no" | "false" => Ok(Value::Bool(false)),
                    _ => Err("yes or no".to_owned()),
                },
                "multiselect" => Ok(Value::Array(
                    v.split(',').map(|x| Value::String(x.trim().to_owned())).filter(|x| x != "").collect(),
                )),
                _ => Ok(Value::String(v.to_owned())),
            };
            match parsed {
                Ok(p) => {
                    out.insert(f.name.clone(), p);
                }
                Err(want) => {
                    f.error = Some(format!("give {want}"));
                    bad = true;
                }
            }
        }
        if bad { Err(()) } else { Ok(out) }
    }

    /// An API answer to `req`.
    pub fn apply(&mut self, req: &Req, status: u16, v: Value) -> Vec<Req> {
        if status >= 300 {
            let detail = v["detail"].as_str().map_or_else(|| v.to_string(), str::to_owned);
            // A refused form: each field's problem beside it.
            if let Some(errors) = v["errors"].as_array() {
                for e in errors {
                    let field =
                        e["field"].as_str().or_else(|| e["pointer"].as_str().map(|p| p.trim_start_matches('/')));
                    if let Some(f) = self.fields.iter_mut().find(|f| Some(f.name.as_str()) == field) {
                        f.error = e["message"].as_str().map(str::to_owned);
                    }
                }
            }
            self.message = Some((true, format!("{status} {}: {detail}", s(&v, "code"))));
            return Vec::new();
        }
        match req {
            Req::Runs => {
                self.runs = v["items"].as_array().cloned().unwrap_or_default();
                self.selected = self.selected.min(self.runs.len().saturating_sub(1));
            }
            Req::Run(id) if self.screen == Screen::Answer => {
                // The form's definition, to list its fields.
                return vec![Req::Source {
                    run: id.clone(),
                    step: s(&self.answering, "step_id"),
                    workflow: s(&v, "workflow"),
                    version: v["version"].as_u64().unwrap_or(1),
                }];
            }
            Req::Run(id) => {
                self.run = v;
                // The definition once per run, for the step graph.
                if self.graph.0 != *id {
                    return vec![Req::Definition {
                        run: id.clone(),
                        workflow: s(&self.run, "workflow"),
                        version: self.run["version"].as_u64().unwrap_or(1),
                    }];
                }
            }
            Req::Definition { run, .. } => {
                fn walk(steps: &[cairn_runtime::Step], depth: usize, out: &mut Vec<(usize, String, &'static str)>) {
                    use cairn_runtime::StepKind;
                    for st in steps {
                        out.push((depth, st.id.clone(), st.kind.name()));
                        match &st.kind {
                            StepKind::Parallel { branches, .. } => {
                                for (name, inner) in branches {
                                    out.push((depth + 1, name.clone(), "branch"));
                                    walk(inner, depth + 2, out);
                                }
                            }
                            StepKind::Map { steps: inner, .. } | StepKind::Dag { steps: inner, .. } => {
                                walk(inner, depth + 1, out)
                            }
                            _ => {}
                        }
                    }
                }
                let mut out = Vec::new();
                if let Ok(w) =
                    cairn_runtime::lang::parse_published(v["source"].as_str().unwrap_or_default(), "workflow")
                {
                    walk(&w.steps, 0, &mut out);
                }
                self.graph = (run.clone(), out);
            }
            Req::History(_) => self.history = v["items"].as_array().cloned().unwrap_or_default(),
            Req::Inbox => {
                self.inbox = v["items"].as_array().cloned().unwrap_or_default();
                self.inbox_selected = self.inbox_selected.min(self.inbox.len().saturating_sub(1));
            }
            Req::Plan(_) => {
                self.plan_text = match serde_json::from_value::<cairn_runtime::recovery::Plan>(v["plan"].clone()) {
                    Ok(p) => crate::commands::recovery::plan_text(&p, false),
                    Err(_) => v["plan"].to_string(),
                };
                self.screen = Screen::Plan;
            }
            Req::Resume(id) => {
                self.screen = Screen::Run;
                self.message = Some((false, "resumed: RunResumed is recorded and the run goes on".into()));
                return vec![Req::Run(id.clone()), Req::History(id.clone())];
            }
            Req::Source { step, .. } => {
                let w = cairn_runtime::lang::parse_published(v["source"].as_str().unwrap_or_default(), "workflow");
                let form = w.ok().and_then(|w| match w.step(step).map(|x| &x.kind) {
                    Some(cairn_runtime::StepKind::Form(f)) => Some(f.fields.clone()),
                    _ => None,
                });
                self.fields = form
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| FieldEdit {
                        kind: f.kind.name().to_owned(),
                        label: f.label.clone().unwrap_or_else(|| f.name.clone()),
                        required: f.required,
                        options: f.options.clone(),
                        value: match &f.default {
                            Some(Value::String(x)) => x.clone(),
                            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        },
                        name: f.name,
                        error: None,
                    })
                    .collect();
            }
            Req::Decide { approve, .. } => {
                self.message =
                    Some((false, format!("{} as {}", if *approve { "approved" } else { "rejected" }, self.identity)));
                self.screen = Screen::Inbox;
                return vec![Req::Inbox];
            }
            Req::Submit { .. } => {
                self.message = Some((false, format!("submitted as {}", self.identity)));
                self.screen = Screen::Inbox;
                return vec![Req::Inbox];
            }
        }
        Vec::new()
    }

    /// Draws the current screen.
    pub fn draw(&self, f: &mut ratatui::Frame) {
        let [head, body, foot] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(2)]).areas(f.area());
        let title = match self.screen {
            Screen::Runs => "runs",
            Screen::Run => "run",
            Screen::Plan => "resume plan",
            Screen::Inbox => "inbox",
            Screen::Answer => "answer",
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(" cairn ", Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)),
                Span::raw(format!(" {title}  ·  as {}", self.identity)),
            ])),
            head,
        );
        match self.screen {
            Screen::Runs => self.draw_runs(f, body),
            Screen::Run => self.draw_run(f, body),
            Screen::Plan => f.render_widget(
                Paragraph::new(self.plan_text.clone())
                    .block(Block::bordered().title(format!(" resume run {} ", short(&s(&self.run, "run_id")))))
                    .wrap(Wrap { trim: false }),
                body,
            ),
            Screen::Inbox => self.draw_inbox(f, body),
            Screen::Answer => self.draw_answer(f, body),
        }
        let keys = match (self.screen, &self.typing) {
            (_, Some(t)) => format!("type, Enter to keep, Esc to leave: {t}▏"),
            (Screen::Runs, None) => "↑↓ select  Enter open  f status  / workflow  i inbox  q quit".into(),
            (Screen::Run, None) => "p plan a resume  i inbox  Esc back  q quit".into(),
            (Screen::Plan, None) => "y resume as planned  n do not (nothing is recorded)".into(),
            (Screen::Inbox, None) => "↑↓ select  Enter answer  Esc back  q quit".into(),
            (Screen::Answer, None) if s(&self.answering, "kind") == "approval" => {
                "a approve  x reject  c comment  Esc back".into()
            }
            (Screen::Answer, None) => "↑↓ field  Enter edit  s submit  Esc back".into(),
        };
        let mut lines = vec![Line::from(Span::styled(keys, Style::new().add_modifier(Modifier::DIM)))];
        if let Some((bad, m)) = &self.message {
            let style = if *bad { Style::new().fg(Color::Red) } else { Style::new().fg(Color::Green) };
            lines.insert(0, Line::from(Span::styled(m.clone(), style)));
        } else {
            lines.insert(0, Line::raw(""));
        }
        f.render_widget(Paragraph::new(lines), foot);
    }

    fn draw_runs(&self, f: &mut ratatui::Frame, area: Rect) {
        let filter = FILTERS[self.filter].unwrap_or("all");
        let wf = if self.workflow.is_empty() { "any".to_owned() } else { self.workflow.clone() };
        let mut lines = vec![Line::from(Span::styled(
            format!("  {:<10} {:<22} {:<10} {:<18} {}", "RUN", "WORKFLOW", "STATUS", "STEP", "STARTED"),
            Style::new().add_modifier(Modifier::BOLD),
        ))];
        for (i, r) in self.runs.iter().enumerate() {
            let status = s(r, "status");
            let row = format!(
                "{} {:<10} {:<22} {:<10} {:<18} {}",
                if i == self.selected { "›" } else { " " },
                short(&s(r, "run_id")),
                format!("{} v{}", s(r, "workflow"), s(r, "version")),
                status,
                s(r, "current_step"),
                clock(&s(r, "started_at"))
            );
            let mut style = status_style(&status);
            if i == self.selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            lines.push(Line::from(Span::styled(row, style)));
        }
        if self.runs.is_empty() {
            lines.push(Line::raw("no runs"));
        }
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(format!(" runs · status {filter} · workflow {wf} "))),
            area,
        );
    }

    fn draw_run(&self, f: &mut ratatui::Frame, area: Rect) {
        let [top, rest] = Layout::vertical([Constraint::Length(4), Constraint::Min(3)]).areas(area);
        let [steps, timeline] =
            Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(rest);
        let r = &self.run;
        let mut head = vec![Line::from(vec![
            Span::raw(format!("{}  {} v{}  ", s(r, "run_id"), s(r, "workflow"), s(r, "version"))),
            Span::styled(s(r, "status"), status_style(&s(r, "status"))),
        ])];
        head.push(Line::raw(format!("started {} by {}", s(r, "started_at"), s(r, "started_by"))));
        if let Some(e) = r["error"].as_object() {
            head.push(Line::styled(
                format!(
                    "failed at {}: [{}] {}",
                    s(&r["error"], "step"),
                    s(&r["error"], "kind"),
                    e.get("message").and_then(Value::as_str).unwrap_or("")
                ),
                Style::new().fg(Color::Red),
            ));
        }
        f.render_widget(Paragraph::new(head).wrap(Wrap { trim: true }), top);
        // The definition's steps, nested as written, each with its latest
        // state (a step inside a map or parallel: its instances' latest).
        let latest = |id: &str| {
            self.history
                .iter()
                .rfind(|h| {
                    let step = s(h, "step_id");
                    s(h, "kind") != "ai" && (step == id || step.ends_with(&format!(".{id}")))
                })
                .map(|h| s(h, "status"))
        };
        let glyph = |st: &str| match st {
            "completed" => "✓",
            "failed" => "✗",
            "waiting" | "requested" => "⏸",
            "skipped" => "↷",
            "" => "·",
            _ => "●",
        };
        let step_lines: Vec<Line> = self
            .graph
            .1
            .iter()
            .map(|(depth, id, kind)| {
                let st = if *kind == "branch" { String::new() } else { latest(id).unwrap_or_default() };
                let pad = "  ".repeat(*depth);
                if *kind == "branch" {
                    Line::raw(format!("{pad}┆ {id}"))
                } else {
                    let state = if st.is_empty() { "not reached".to_owned() } else { st.clone() };
                    Line::styled(format!("{pad}{} {id} ({kind}) {state}", glyph(&st)), status_style(&st))
                }
            })
            .collect();
        f.render_widget(Paragraph::new(step_lines).block(Block::bordered().title(" steps ")), steps);
        let events: Vec<Line> = self
            .history
            .iter()
            .map(|h| {
                let what =
                    [s(h, "error_message"), s(h, "detail")].into_iter().find(|x| !x.is_empty()).unwrap_or_default();
                Line::styled(
                    format!(
                        "{} {:<10} {:<9} {:<10} {}",
                        clock(&s(h, "started_at")),
                        s(h, "step_id"),
                        s(h, "kind"),
                        s(h, "status"),
                        what
                    ),
                    status_style(&s(h, "status")),
                )
            })
            .collect();
        f.render_widget(Paragraph::new(events).block(Block::bordered().title(" timeline ")), timeline);
    }

    fn draw_inbox(&self, f: &mut ratatui::Frame, area: Rect) {
        let mut lines = Vec::new();
        for (i, item) in self.inbox.iter().enumerate() {
            let row = format!(
                "{} {:<9} {:<10} {:<14} {}",
                if i == self.inbox_selected { "›" } else { " " },
                s(item, "kind"),
                short(&s(item, "run_id")),
                s(item, "step_id"),
                s(item, "summary")
            );
            let style =
                if i == self.inbox_selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
            lines.push(Line::styled(row, style));
        }
        if lines.is_empty() {
            lines.push(Line::raw("nothing waits for you"));
        }
        f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" waiting for people ")), area);
    }

    fn draw_answer(&self, f: &mut ratatui::Frame, area: Rect) {
        let a = &self.answering;
        let mut lines = vec![
            Line::styled(s(a, "summary"), Style::new().add_modifier(Modifier::BOLD)),
            Line::raw(format!("{} `{}` of run {}", s(a, "kind"), s(a, "step_id"), s(a, "run_id"))),
            Line::raw(""),
        ];
        if s(a, "kind") == "approval" {
            lines.push(Line::raw(format!("comment: {}", self.comment)));
        } else {
            for (i, fe) in self.fields.iter().enumerate() {
                let mark = match &fe.error {
                    Some(_) => "✗",
                    None if fe.required => "*",
                    None => " ",
                };
                let options =
                    if fe.options.is_empty() { String::new() } else { format!(" ({})", fe.options.join(", ")) };
                let style =
                    if i == self.field_selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
                let at = if i == self.field_selected { "›" } else { " " };
                lines.push(Line::styled(format!("{at}{mark} {:<24} {}{options}", fe.label, fe.value), style));
                if let Some(e) = &fe.error {
                    lines.push(Line::styled(format!("    {e}"), Style::new().fg(Color::Red)));
                }
            }
        }
        f.render_widget(Paragraph::new(lines).block(Block::bordered()).wrap(Wrap { trim: false }), area);
    }
}

/// `cairn tui`: until `q`. Runs resumed or answered here are driven by this
/// process while it is open (and by any worker on the database).
pub async fn run(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &crate::commands::setup::SetupArgs,
    args: crate::local::Args,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!(
            "error: cairn tui needs a terminal; for scripts use `cairn runs --format json`, `cairn inbox`, `cairn resume`"
        );
        return Ok(crate::codes::exit("usage"));
    }
    let running = crate::local::start(database, read, setup, args).await?;
    let identity = setup.identity.clone().unwrap_or_else(|| "anonymous".into());
    let mut app = App::new(&identity);
    let mut terminal = ratatui::init();
    let result = async {
        let mut pending: Vec<Req> = Vec::new();
        loop {
            pending.extend(app.refresh(Instant::now()));
            while let Some(req) = pending.pop() {
                let (method, path, body) = req.http(FILTERS[app.filter], &app.workflow);
                let (status, v) = crate::local::request(&running.app, method, &path, body, &[], None).await?;
                pending.extend(app.apply(&req, status, v));
            }
            terminal.draw(|f| app.draw(f))?;
            let ev = tokio::task::spawn_blocking(|| -> std::io::Result<Option<ratatui::crossterm::event::Event>> {
                use ratatui::crossterm::event;
                if event::poll(Duration::from_millis(200))? { Ok(Some(event::read()?)) } else { Ok(None) }
            })
            .await??;
            if let Some(ratatui::crossterm::event::Event::Key(k)) = ev
                && k.kind == ratatui::crossterm::event::KeyEventKind::Press
            {
                if !matches!(k.code, KeyCode::Char('q')) {
                    app.message = None;
                }
                match app.key(k) {
                    Action::Quit => break,
                    Action::Send(reqs) => pending.extend(reqs.into_iter().rev()),
                    Action::None => {}
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    running.finish().await;
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// The screen as text, one line per row (trailing spaces trimmed).
    fn render(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(100, 24)).unwrap();
        t.draw(|f| app.draw(f)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            let mut line = String::new();
            for x in 0..buf.area.width {
                line.push_str(buf[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Compares with `tests/snapshots/NAME.txt` (`CAIRN_UPDATE_SNAPSHOTS=1`
    /// writes it).
    fn snapshot(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/snapshots/{name}.txt"));
        if std::env::var("CAIRN_UPDATE_SNAPSHOTS").is_ok() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("no snapshot {}; set CAIRN_UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(text, want, "the {name} screen changed; if that is right, set CAIRN_UPDATE_SNAPSHOTS=1");
    }

    const RUN: &str = "01a25361-b8e4-7333-91ff-298290c9d548";

    fn app_with_runs() -> App {
        let mut app = App::new("ana");
        let runs = json!({"items": [
            {"run_id": RUN, "workflow": "flaky", "version": 1, "status": "failed", "current_step": "publish", "started_at": "2026-12-08T02:00:42.983031Z"},
            {"run_id": "01a25361-b893-73db-a0dd-41d6b1fd7ef4", "workflow": "report", "version": 2, "status": "completed", "current_step": "report", "started_at": "2026-12-08T02:00:40.903510Z"},
            {"run_id": "01a25361-aaaa-73db-a0dd-41d6b1fd7ef4", "workflow": "launch", "version": 1, "status": "waiting", "current_step": "review", "started_at": "2026-12-08T01:59:10.000000Z"}
        ]});
        app.apply(&Req::Runs, 200, runs);
        app
    }

    #[test]
    fn the_runs_list() {
        let mut app = app_with_runs();
        assert!(matches!(app.key(KeyEvent::from(KeyCode::Char('f'))), Action::Send(ref r) if r == &vec![Req::Runs]));
        assert_eq!(Req::Runs.http(FILTERS[app.filter], "").1, "/runs?limit=200&status=running");
        app.filter = 0;
        app.key(KeyEvent::from(KeyCode::Down));
        snapshot("tui-runs", &render(&app));
    }

    fn app_on_run() -> App {
        let mut app = app_with_runs();
        let Action::Send(reqs) = app.key(KeyEvent::from(KeyCode::Enter)) else { panic!("opens the run") };
        assert_eq!(reqs, vec![Req::Run(RUN.into()), Req::History(RUN.into())]);
        app.apply(
            &Req::Run(RUN.into()),
            200,
            json!({"run_id": RUN, "workflow": "flaky", "version": 1, "status": "failed", "started_at": "2026-12-08T02:00:42.983031Z", "started_by": "ana",
                   "error": {"step": "publish", "kind": "cms.unavailable", "message": "the CMS did not answer"}}),
        );
        let Some(def) = app.apply(&Req::Run(RUN.into()), 200, app.run.clone()).pop() else {
            panic!("asks for the definition")
        };
        let source = "name: flaky\nsteps:\n  - id: draft\n    transform: { title: Hello }\n  - id: publish\n    task: fail\n    with: { kind: cms.unavailable }\n  - id: announce\n    task: echo\n    with: { text: \"{{ steps.draft.output.title }}\" }\n";
        app.apply(&def, 200, json!({ "source": source }));
        let h = |step: &str, kind: &str, status: &str, at: &str, err: &str| json!({"step_id": step, "kind": kind, "status": status, "started_at": at, "error_message": err, "detail": ""});
        app.apply(
            &Req::History(RUN.into()),
            200,
            json!({"items": [
                h("draft", "attempt", "completed", "2026-12-08T02:00:42.983Z", ""),
                h("publish", "attempt", "failed", "2026-12-08T02:00:42.990Z", "the CMS did not answer"),
                h("publish", "attempt", "failed", "2026-12-08T02:00:43.010Z", "the CMS did not answer"),
            ]}),
        );
        app
    }

    #[test]
    fn a_run() {
        snapshot("tui-run", &render(&app_on_run()));
    }

    #[test]
    fn a_resume_plan_then_its_confirmation() {
        let mut app = app_on_run();
        let Action::Send(reqs) = app.key(KeyEvent::from(KeyCode::Char('p'))) else { panic!("plans") };
        assert_eq!(reqs, vec![Req::Plan(RUN.into())]);
        let (method, _, body) = reqs[0].http(None, "");
        assert!(method == Method::POST && matches!(body, Some(Body::Json(ref b)) if b["dry_run"] == true));
        let plan = json!({"resumed": false, "plan": {
            "run_id": RUN, "workflow": "flaky", "workflow_version": 1, "status": "failed", "from_step": "publish", "policy": "failed-only",
            "plan": {"kept": ["draft"], "rerun": ["publish"], "rerun_if_changed": [], "newly_reached": ["announce"], "no_longer_reached": [],
                     "failed": ["publish"], "stale_approvals": [], "not_idempotent": [], "ai_costs": [], "estimated_cost": 0.0},
            "lines": [
                {"mark": "kept", "step": "draft", "kind": "transform", "note": "output kept"},
                {"mark": "rerun", "step": "publish", "kind": "task", "note": "runs again: resumed from here: it failed"},
                {"mark": "newly_reached", "step": "announce", "kind": "task", "note": "newly reached"}],
            "warnings": [], "inputs": null, "at_version": 9}});
        app.apply(&reqs[0], 200, plan);
        assert_eq!(app.screen, Screen::Plan);
        snapshot("tui-plan", &render(&app));
        // n: nothing recorded, back to the run; y: the resume.
        app.key(KeyEvent::from(KeyCode::Char('n')));
        assert_eq!(app.screen, Screen::Run);
        app.screen = Screen::Plan;
        let Action::Send(reqs) = app.key(KeyEvent::from(KeyCode::Char('y'))) else { panic!("resumes") };
        assert_eq!(reqs, vec![Req::Resume(RUN.into())]);
    }

    #[test]
    fn a_refused_answer_is_shown_beside_its_field() {
        let mut app = App::new("ana");
        app.screen = Screen::Answer;
        app.answering = json!({"kind": "form", "run_id": RUN, "step_id": "brief", "summary": "A brief"});
        app.fields = vec![FieldEdit {
            name: "words".into(),
            kind: "integer".into(),
            label: "Words".into(),
            required: true,
            options: Vec::new(),
            value: "many".into(),
            error: None,
        }];
        assert!(matches!(app.key(KeyEvent::from(KeyCode::Char('s'))), Action::None), "not sent: not a number");
        assert_eq!(app.fields[0].error.as_deref(), Some("give a whole number"));
        app.fields[0].value = "50".into();
        let Action::Send(reqs) = app.key(KeyEvent::from(KeyCode::Char('s'))) else { panic!("sent") };
        let refused = json!({"code": "invalid-submission", "detail": "1 field is wrong", "errors": [{"field": "words", "message": "at least 100"}]});
        app.apply(&reqs[0], 422, refused);
        assert_eq!(app.fields[0].error.as_deref(), Some("at least 100"));
        assert!(render(&app).contains("at least 100"));
    }
}
