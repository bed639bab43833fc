//! Pages for the people a run waits for: the link in a form's or an
//! approval's notification opens a page for exactly that request, with no
//! account and no API key. The token in the link is the recipient's own
//! (`cairn_core::human::answer_token`): it answers as them, for this step
//! attempt only; it stops working when the request closes (answered,
//! expired, the run ended) and, for an approval, once they decided.
//!
//! Server-rendered HTML that works without JavaScript, styled by one
//! embedded stylesheet; every page carries a CSP with no script at all,
//! `frame-ancestors 'none'`, `nosniff`, `no-referrer` (the token is in the
//! URL) and `no-store`. A submission is validated by the engine, as from
//! the API or the CLI; each error is shown beside its field with what was
//! typed kept. After an answer the page redirects (303) to itself, which
//! then confirms what was recorded, so a reload never answers twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State as S};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use cairn_runtime::people::{Field, FieldError, FieldType, HumanError, Submission, Vote};
use cairn_runtime::run::HumanWait;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::State;

/// The stylesheet every page links to.
const CSS: &str = include_str!("../../assets/cairn.css");

/// The pages' routes (kept out of the API's OpenAPI document: they answer
/// browsers, in HTML).
pub fn router() -> Router<Arc<State>> {
    Router::new().route("/runs/{id}/steps/{step}", get(show).post(answer)).route("/assets/cairn.css", get(stylesheet))
}

async fn stylesheet() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response();
    secure(&mut r);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

/// The link's query.
#[derive(Debug, Deserialize)]
pub struct Link {
    #[serde(default)]
    token: Option<String>,
}

/// `GET /runs/{id}/steps/{step}?token=…`: the request's page.
async fn show(S(state): S<Arc<State>>, Path((id, step)): Path<(String, String)>, Query(q): Query<Link>) -> Response {
    match open(&state, &id, &step, q.token.as_deref().unwrap_or("")).await {
        Ok(Opened::Open(r)) => page(StatusCode::OK, &r.title(), &r.render(&Typed::default(), &[], None)),
        Ok(Opened::Closed(r, why)) => closed(&r, &why),
        Err(p) => p,
    }
}

/// `POST /runs/{id}/steps/{step}`: a form submission or an approval
/// decision, `application/x-www-form-urlencoded` (a plain HTML form).
async fn answer(
    S(state): S<Arc<State>>,
    Path((id, step)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let typed = Typed::parse(&body);
    let token = typed.one("_token").to_owned();
    let r = match open(&state, &id, &step, &token).await {
        Ok(Opened::Open(r)) => r,
        Ok(Opened::Closed(r, why)) => return closed(&r, &why),
        Err(p) => return p,
    };
    let outcome = if r.wait.kind == "form" {
        let s = Submission { by: r.identity.clone(), token: token.clone(), values: r.values(&typed) };
        state.engine.submit(r.run, &r.step, &s).await
    } else {
        let approve = match typed.one("_decision") {
            "approve" => true,
            "reject" => false,
            _ => {
                let e = [FieldError { field: "_".into(), message: "choose Approve or Reject".into() }];
                return page(StatusCode::UNPROCESSABLE_ENTITY, &r.title(), &r.render(&typed, &e, None));
            }
        };
        let comment = Some(typed.one("_comment").to_owned()).filter(|c| !c.trim().is_empty());
        let shown = Some(typed.one("_content_hash").to_owned()).filter(|h| !h.is_empty());
        // An approval's fields, as typed: checked when approving; a rejection may leave them empty.
        let values = if r.wait.fields.is_empty() { Value::Null } else { r.values(&typed) };
        let v = Vote { by: r.identity.clone(), token: token.clone(), approve, comment, content_hash: shown, values };
        state.engine.decide_approval(r.run, &r.step, &v).await
    };
    match outcome {
        Ok(_) => {
            state.driver.kick(r.run);
            Redirect::to(&format!("/runs/{}/steps/{}?token={}", r.run, seg(&r.step), enc(&token))).into_response()
        }
        Err(HumanError::Invalid { errors, .. }) => {
            page(StatusCode::UNPROCESSABLE_ENTITY, &r.title(), &r.render(&typed, &errors, None))
        }
        Err(HumanError::ContentChanged { .. }) => {
            // Show the content as it is now; nothing was recorded.
            let again = open(&state, &id, &step, &token).await;
            match again {
                Ok(Opened::Open(now)) => {
                    let note = "What you were asked to approve changed while you read it: review it again below.";
                    page(StatusCode::CONFLICT, &now.title(), &now.render(&Typed::default(), &[], Some(note)))
                }
                Ok(Opened::Closed(now, why)) => closed(&now, &why),
                Err(p) => p,
            }
        }
        Err(HumanError::Conflict { .. } | HumanError::NotWaiting { .. }) => {
            match open(&state, &id, &step, &token).await {
                Ok(Opened::Closed(now, why)) => closed(&now, &why),
                Ok(Opened::Open(now)) => closed(&now, &Closed::Other),
                Err(p) => p,
            }
        }
        Err(HumanError::BadToken { .. } | HumanError::NotAllowed { .. }) => invalid(),
        Err(e) => {
            tracing::error!(run_id = %r.run, step = %r.step, error = %e, "recording an answer from a page failed");
            let body = "<h1>Not recorded</h1><p>Your answer could not be recorded just now; nothing was changed. \
                        Try again in a moment.</p>";
            page(StatusCode::SERVICE_UNAVAILABLE, "Not recorded", body)
        }
    }
}

/// A request, as its link's holder sees it.
struct Request {
    run: Uuid,
    step: String,
    identity: String,
    token: String,
    wait: HumanWait,
    workflow: String,
    now: chrono::DateTime<chrono::Utc>,
}

enum Opened {
    Open(Request),
    Closed(Request, Closed),
}

/// Why a request takes no answer from this link any more.
enum Closed {
    /// This person decided (an approval): their decision.
    Decided(bool, Option<String>),
    /// The form was submitted, by this person or another.
    Submitted(String),
    /// The deadline passed.
    Expired,
    /// The run ended, was cancelled, or moved past the step.
    Other,
}

/// Checks the link: the run, the step's latest request, the token (this
/// person's, for this attempt), and whether the request still takes their
/// answer. A link that fails any check gets the same page, whatever the
/// reason, so a guess learns nothing.
async fn open(state: &State, id: &str, step: &str, token: &str) -> Result<Opened, Response> {
    let Ok(run) = id.parse::<Uuid>() else { return Err(invalid()) };
    if token.is_empty() {
        return Err(invalid());
    }
    let s = match super::runs::load(state, run).await {
        Ok((s, _)) => s,
        Err(e) if e.0.status == 404 => return Err(invalid()),
        Err(e) => {
            tracing::error!(run_id = %run, error = %e.0.detail, "cannot read a run for its page");
            let body = "<h1>Unavailable</h1><p>This page cannot be shown just now. Try again in a moment.</p>";
            return Err(page(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", body));
        }
    };
    let Some(wait) = s.people.get(step).cloned() else { return Err(invalid()) };
    let Some(identity) = state.engine.answer_token_identity(run, step, wait.attempt, token) else {
        return Err(invalid());
    };
    // An approval escalated to others is no longer the first approvers' to
    // decide; a form's assignees never change.
    let theirs = wait.assignees.is_empty() || wait.assignees.contains(&identity) || wait.decided(&identity);
    if !theirs {
        return Err(invalid());
    }
    let open_now = s.waiting_for_people().iter().any(|(i, h)| *i == step && h.kind == wait.kind);
    let now = state.engine.clock().now();
    let r = Request {
        run,
        step: step.to_owned(),
        identity: identity.clone(),
        token: token.to_owned(),
        workflow: s.workflow.clone(),
        now,
        wait,
    };
    let why = if let Some(d) = r.wait.decisions.iter().find(|d| d.by == identity) {
        Some(Closed::Decided(d.approved, d.comment.clone()))
    } else if let Some((by, _)) = &r.wait.submitted {
        Some(Closed::Submitted(by.clone()))
    } else if r.wait.expired || r.wait.deadline.is_some_and(|d| d <= now) {
        Some(Closed::Expired)
    } else if !open_now {
        Some(Closed::Other)
    } else {
        None
    };
    Ok(match why {
        Some(w) => Opened::Closed(r, w),
        None => Opened::Open(r),
    })
}

impl Request {
    fn title(&self) -> String {
        let what = if self.wait.kind == "form" { "Input needed" } else { "Approval needed" };
        match &self.wait.title {
            Some(t) if !t.trim().is_empty() => format!("{what}: {t}"),
            _ => format!("{what}: {}", self.step),
        }
    }

    fn fields(&self) -> Vec<Field> {
        self.wait.fields.iter().map(Field::from_recorded).collect()
    }

    /// The submitted values, typed by each field's kind; what does not
    /// parse is passed on as typed, for the engine to say what is wrong.
    fn values(&self, t: &Typed) -> Value {
        let mut out = serde_json::Map::new();
        for f in self.fields() {
            let v = match f.kind {
                FieldType::Multiselect => {
                    let all = t.all(&f.name);
                    if all.is_empty() {
                        continue;
                    }
                    Value::Array(all.into_iter().map(|s| Value::String(s.to_owned())).collect())
                }
                _ => {
                    let raw = t.one(&f.name).trim();
                    if raw.is_empty() {
                        continue;
                    }
                    match f.kind {
                        FieldType::Integer => {
                            raw.parse::<i64>().map_or_else(|_| Value::String(raw.into()), Value::from)
                        }
                        FieldType::Number => raw
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map_or_else(|| Value::String(raw.into()), Value::Number),
                        FieldType::Boolean => match raw {
                            "true" => Value::Bool(true),
                            "false" => Value::Bool(false),
                            other => Value::String(other.into()),
                        },
                        _ => Value::String(t.one(&f.name).to_owned()),
                    }
                }
            };
            out.insert(f.name.clone(), v);
        }
        Value::Object(out)
    }

    /// The page body: what is asked, and the form to answer it.
    fn render(&self, typed: &Typed, errors: &[FieldError], note: Option<&str>) -> String {
        let mut b = String::new();
        let _ = write!(b, "<h1>{}</h1>", esc(&self.title()));
        let _ = write!(
            b,
            "<p class=\"meta\">For <strong>{}</strong> · workflow <code>{}</code> · run <code>{}</code> · step <code>{}</code></p>",
            esc(&self.identity),
            esc(&self.workflow),
            self.run,
            esc(&self.step)
        );
        if let Some(d) = self.wait.deadline {
            let _ = write!(
                b,
                "<p class=\"deadline\">Answer by <time datetime=\"{}\">{}</time> ({})</p>",
                d.to_rfc3339(),
                d.format("%Y-%m-%d %H:%M UTC"),
                until(self.now, d)
            );
        }
        if let Some(n) = note {
            let _ = write!(b, "<p class=\"notice\" role=\"alert\">{}</p>", esc(n));
        }
        let whole: Vec<&FieldError> = errors.iter().filter(|e| e.field == "_" || !self.has_field(&e.field)).collect();
        if !errors.is_empty() {
            let _ = write!(
                b,
                "<div class=\"errors\" role=\"alert\" id=\"errors\"><p>Nothing was recorded: {} to fix.</p>",
                if errors.len() == 1 { "one thing".to_owned() } else { format!("{} things", errors.len()) }
            );
            if !whole.is_empty() {
                b.push_str("<ul>");
                for e in &whole {
                    let _ = write!(b, "<li>{}</li>", esc(&e.message));
                }
                b.push_str("</ul>");
            }
            b.push_str("</div>");
        }
        let action = format!("/runs/{}/steps/{}", self.run, seg(&self.step));
        let _ = write!(b, "<form method=\"post\" action=\"{}\" novalidate>", esc(&action));
        let _ = write!(b, "<input type=\"hidden\" name=\"_token\" value=\"{}\">", esc(&self.token));
        if self.wait.kind == "form" {
            for f in self.fields() {
                let err: Vec<&FieldError> = errors.iter().filter(|e| e.field == f.name).collect();
                field_html(&mut b, &f, typed, !errors.is_empty(), &err);
            }
            b.push_str("<div class=\"actions\"><button type=\"submit\">Submit</button></div>");
        } else {
            self.approval_html(&mut b, typed, errors);
        }
        b.push_str("</form>");
        b
    }

    fn has_field(&self, name: &str) -> bool {
        self.wait.fields.iter().any(|f| f.name == name)
    }

    fn approval_html(&self, b: &mut String, typed: &Typed, errors: &[FieldError]) {
        let w = &self.wait;
        b.push_str("<section class=\"content\" aria-labelledby=\"content-h\"><h2 id=\"content-h\">What you are asked to approve</h2>");
        content_html(b, &w.content);
        let _ = write!(b, "<p class=\"hash\">Content hash <code>{}</code></p></section>", esc(&w.content_hash));
        let round: Vec<_> = w.decisions.iter().filter(|d| d.round == w.round).collect();
        let approved = round.iter().filter(|d| d.approved).count();
        let _ = write!(
            b,
            "<section class=\"quorum\" aria-labelledby=\"quorum-h\"><h2 id=\"quorum-h\">Approvals</h2><p>{approved} of {} needed ({}) · approvers: {}</p>",
            w.required,
            esc(&w.quorum),
            esc(&w.assignees.join(", "))
        );
        if !round.is_empty() {
            b.push_str("<ul>");
            for d in &round {
                let _ = write!(
                    b,
                    "<li><strong>{}</strong> {}{}</li>",
                    esc(&d.by),
                    if d.approved { "approved" } else { "rejected" },
                    d.comment.as_deref().map(|c| format!(": “{}”", esc(c))).unwrap_or_default()
                );
            }
            b.push_str("</ul>");
        }
        b.push_str("</section>");
        let _ = write!(b, "<input type=\"hidden\" name=\"_content_hash\" value=\"{}\">", esc(&w.content_hash));
        if !w.fields.is_empty() {
            // What an approval carries besides the decision; required ones to approve.
            b.push_str("<fieldset class=\"decision-fields\"><legend>With your approval</legend>");
            for f in self.fields() {
                let err: Vec<&FieldError> = errors.iter().filter(|e| e.field == f.name).collect();
                field_html(b, &f, typed, !errors.is_empty(), &err);
            }
            b.push_str("</fieldset>");
        }
        let _ = write!(
            b,
            "<div class=\"field\"><label for=\"f-comment\">Comment <span class=\"optional\">(optional)</span></label><textarea id=\"f-comment\" name=\"_comment\" rows=\"3\">{}</textarea></div>",
            esc(typed.one("_comment"))
        );
        b.push_str(
            "<div class=\"actions\"><button type=\"submit\" name=\"_decision\" value=\"approve\">Approve</button> \
             <button type=\"submit\" name=\"_decision\" value=\"reject\" class=\"secondary\">Reject</button></div>",
        );
    }
}

/// One form field: its label, input, help and errors, with what was typed
/// (after a refused submission) or its default (the first time).
fn field_html(b: &mut String, f: &Field, typed: &Typed, resubmitted: bool, errors: &[&FieldError]) {
    let id = format!("f-{}", f.name);
    let label = f.label.clone().unwrap_or_else(|| f.name.clone());
    let described = {
        let mut d = Vec::new();
        if f.help.is_some() {
            d.push(format!("{id}-help"));
        }
        if !errors.is_empty() {
            d.push(format!("{id}-error"));
        }
        if d.is_empty() { String::new() } else { format!(" aria-describedby=\"{}\"", d.join(" ")) }
    };
    let invalid = if errors.is_empty() { "" } else { " aria-invalid=\"true\"" };
    let required = if f.required { " required aria-required=\"true\"" } else { "" };
    let default =
        f.default.as_ref().map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)).unwrap_or_default();
    let value = if resubmitted { typed.one(&f.name).to_owned() } else { default.clone() };
    let _ = write!(b, "<div class=\"field{}\">", if errors.is_empty() { "" } else { " has-error" });
    let mark = if f.required { " <span class=\"required\">(required)</span>" } else { "" };
    let grouped = matches!(f.kind, FieldType::Boolean | FieldType::Multiselect);
    if grouped {
        let _ = write!(b, "<fieldset{described}><legend>{}{mark}</legend>", esc(&label));
    } else {
        let _ = write!(b, "<label for=\"{id}\">{}{mark}</label>", esc(&label));
    }
    let name = esc(&f.name);
    match f.kind {
        FieldType::Textarea => {
            let _ = write!(
                b,
                "<textarea id=\"{id}\" name=\"{name}\" rows=\"5\"{}{required}{invalid}{described}>{}</textarea>",
                lengths(f),
                esc(&value)
            );
        }
        FieldType::Select => {
            let _ = write!(b, "<select id=\"{id}\" name=\"{name}\"{required}{invalid}{described}>");
            let _ =
                write!(b, "<option value=\"\"{}>— choose —</option>", if value.is_empty() { " selected" } else { "" });
            for o in &f.options {
                let sel = if *o == value { " selected" } else { "" };
                let _ = write!(b, "<option value=\"{0}\"{sel}>{0}</option>", esc(o));
            }
            b.push_str("</select>");
        }
        FieldType::Multiselect => {
            let chosen: Vec<String> = if resubmitted {
                typed.all(&f.name).into_iter().map(str::to_owned).collect()
            } else {
                f.default
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            for (i, o) in f.options.iter().enumerate() {
                let on = if chosen.contains(o) { " checked" } else { "" };
                let _ = write!(
                    b,
                    "<label class=\"choice\" for=\"{id}-{i}\"><input type=\"checkbox\" id=\"{id}-{i}\" name=\"{name}\" value=\"{0}\"{on}> {0}</label>",
                    esc(o)
                );
            }
        }
        FieldType::Boolean => {
            for (v, text) in [("true", "Yes"), ("false", "No")] {
                let on = if value == v { " checked" } else { "" };
                let _ = write!(
                    b,
                    "<label class=\"choice\" for=\"{id}-{v}\"><input type=\"radio\" id=\"{id}-{v}\" name=\"{name}\" value=\"{v}\"{on}{required}> {text}</label>"
                );
            }
        }
        kind => {
            let (ty, extra) = match kind {
                FieldType::Number => ("number", format!(" step=\"any\"{}", bounds(f))),
                FieldType::Integer => ("number", format!(" step=\"1\"{}", bounds(f))),
                FieldType::Date => ("date", String::new()),
                FieldType::Email => ("email", lengths(f)),
                FieldType::Url => ("url", lengths(f)),
                _ => (
                    "text",
                    format!(
                        "{}{}",
                        lengths(f),
                        f.pattern.as_ref().map(|p| format!(" pattern=\"{}\"", esc(p))).unwrap_or_default()
                    ),
                ),
            };
            let _ = write!(
                b,
                "<input type=\"{ty}\" id=\"{id}\" name=\"{name}\" value=\"{}\"{extra}{required}{invalid}{described}>",
                esc(&value)
            );
        }
    }
    if let Some(h) = &f.help {
        let _ = write!(b, "<p class=\"help\" id=\"{id}-help\">{}</p>", esc(h));
    }
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| esc(&e.message)).collect();
        let _ = write!(b, "<p class=\"error\" id=\"{id}-error\">{} {}</p>", esc(&label), text.join("; "));
    }
    if grouped {
        b.push_str("</fieldset>");
    }
    b.push_str("</div>");
}

fn bounds(f: &Field) -> String {
    let mut s = String::new();
    if let Some(m) = f.min {
        let _ = write!(s, " min=\"{m}\"");
    }
    if let Some(m) = f.max {
        let _ = write!(s, " max=\"{m}\"");
    }
    s
}

fn lengths(f: &Field) -> String {
    let mut s = String::new();
    if let Some(m) = f.min_length {
        let _ = write!(s, " minlength=\"{m}\"");
    }
    if let Some(m) = f.max_length {
        let _ = write!(s, " maxlength=\"{m}\"");
    }
    s
}

/// The content of an approval, readably: text (an AI draft, say) formatted
/// from its Markdown with the exact text a click away, an object as a table
/// of its fields, a list of objects as a table with a column per field,
/// anything else as indented JSON.
fn content_html(b: &mut String, c: &Value) {
    let cell = |v: &Value| match v {
        Value::String(s) if s.contains('\n') => format!("<div class=\"draft\">{}</div>", markdown_html(s)),
        Value::String(s) => esc(s),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            esc(&a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        }
        other => format!("<code>{}</code>", esc(&other.to_string())),
    };
    match c {
        Value::Null => b.push_str("<p><em>No content was given with this request.</em></p>"),
        Value::String(s) => {
            let _ = write!(
                b,
                "<div class=\"draft\">{}</div><details><summary>The exact text approved</summary><pre tabindex=\"0\" class=\"source\">{}</pre></details>",
                markdown_html(s),
                esc(s)
            );
        }
        Value::Object(m) => {
            b.push_str("<table><tbody>");
            for (k, v) in m {
                let _ = write!(b, "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", esc(k), cell(v));
            }
            b.push_str("</tbody></table>");
        }
        Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => {
            let mut cols: Vec<&str> = Vec::new();
            for r in rows {
                for k in r.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !cols.contains(&k.as_str()) {
                        cols.push(k);
                    }
                }
            }
            b.push_str("<table><thead><tr>");
            for c in &cols {
                let _ = write!(b, "<th scope=\"col\">{}</th>", esc(c));
            }
            b.push_str("</tr></thead><tbody>");
            for r in rows {
                b.push_str("<tr>");
                for c in &cols {
                    let _ = write!(b, "<td>{}</td>", r.get(*c).map(cell).unwrap_or_default());
                }
                b.push_str("</tr>");
            }
            b.push_str("</tbody></table>");
        }
        other => {
            let _ = write!(
                b,
                "<pre tabindex=\"0\">{}</pre>",
                esc(&serde_json::to_string_pretty(other).unwrap_or_default())
            );
        }
    }
}

/// Markdown (CommonMark with tables, strikethrough and task lists) as
/// HTML that cannot act: raw HTML in the text is shown as text, a link
/// keeps its text but loses an address that is not `http`, `https` or
/// `mailto` (no `javascript:`), an image is its description in italics (no
/// request leaves the page), and headings start at `h3`, under the page's
/// own `h1` and `h2`.
pub(super) fn markdown_html(text: &str) -> String {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let safe = |url: &str| {
        let u = url.trim_start().to_ascii_lowercase();
        ["http://", "https://", "mailto:"].iter().any(|p| u.starts_with(p))
    };
    let lower = |l: HeadingLevel| match l {
        HeadingLevel::H1 => HeadingLevel::H3,
        HeadingLevel::H2 => HeadingLevel::H4,
        HeadingLevel::H3 => HeadingLevel::H5,
        _ => HeadingLevel::H6,
    };
    // Whether each open link was kept, to drop the end of a dropped one.
    let mut links: Vec<bool> = Vec::new();
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(text, opts).filter_map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
        Event::Start(Tag::HtmlBlock) => Some(Event::Start(Tag::Paragraph)),
        Event::End(TagEnd::HtmlBlock) => Some(Event::End(TagEnd::Paragraph)),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let keep = safe(&dest_url);
            links.push(keep);
            keep.then_some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        Event::End(TagEnd::Link) => links.pop().unwrap_or(false).then_some(Event::End(TagEnd::Link)),
        Event::Start(Tag::Image { .. }) => Some(Event::Start(Tag::Emphasis)),
        Event::End(TagEnd::Image) => Some(Event::End(TagEnd::Emphasis)),
        Event::Start(Tag::Heading { level, id, classes, attrs }) => {
            Some(Event::Start(Tag::Heading { level: lower(level), id, classes, attrs }))
        }
        Event::End(TagEnd::Heading(level)) => Some(Event::End(TagEnd::Heading(lower(level)))),
        other => Some(other),
    });
    let mut out = String::with_capacity(text.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// "in 2 h 5 min", "5 min ago".
fn until(now: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (at - now).num_seconds();
    let m = secs.unsigned_abs() / 60;
    let span = match m {
        0 => "less than a minute".to_owned(),
        m if m < 60 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} days", m / (24 * 60)),
    };
    if secs >= 0 { format!("in {span}") } else { format!("{span} ago") }
}

/// The page for a request that takes no answer from this link any more.
fn closed(r: &Request, why: &Closed) -> Response {
    let (status, head, text) = match why {
        Closed::Decided(ok, comment) => (
            StatusCode::OK,
            "Thank you: your decision is recorded",
            format!(
                "You <strong>{}</strong> this request{}. It cannot be changed from this link.",
                if *ok { "approved" } else { "rejected" },
                comment.as_deref().map(|c| format!(", commenting “{}”", esc(c))).unwrap_or_default()
            ),
        ),
        Closed::Submitted(by) if *by == r.identity => (
            StatusCode::OK,
            "Thank you: your answer is recorded",
            "The run goes on with what you entered. This link takes no other answer.".to_owned(),
        ),
        Closed::Submitted(by) => (
            StatusCode::GONE,
            "Already answered",
            format!("<strong>{}</strong> answered this request already; it takes no other answer.", esc(by)),
        ),
        Closed::Expired => (
            StatusCode::GONE,
            "This request expired",
            "Its deadline passed before an answer came, so this link no longer works. The workflow decides what \
             happens next; ask whoever runs it if you still need to act."
                .to_owned(),
        ),
        Closed::Other => (
            StatusCode::GONE,
            "This request is closed",
            "The run no longer waits for this answer (it moved on, ended or was cancelled), so this link no \
             longer works."
                .to_owned(),
        ),
    };
    let body = format!(
        "<h1>{}</h1><p>{text}</p><p class=\"meta\">{} · run <code>{}</code> · step <code>{}</code></p>",
        esc(head),
        esc(&r.title()),
        r.run,
        esc(&r.step)
    );
    page(status, head, &body)
}

/// The page for a link that is not valid: the same whatever was wrong.
fn invalid() -> Response {
    let body = "<h1>This link is not valid</h1><p>It may be mistyped or cut short, or it was meant for someone \
                else or for an earlier request. Open the link from your most recent message, whole; if it still \
                fails, ask whoever runs the workflow to send a new one.</p>";
    page(StatusCode::NOT_FOUND, "Link not valid", body)
}

/// A whole page around `body`, with the security headers; no script.
pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    page_with(status, title, body, false)
}

/// A whole page; with `script`, the console's one script file (progressive:
/// every page works without it) and a CSP that allows only that file and
/// connections back to this server.
pub(super) fn page_with(status: StatusCode, title: &str, body: &str, script: bool) -> Response {
    let tag = if script { "<script src=\"/assets/console.js\" defer></script>" } else { "" };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · Cairn</title><link rel=\"stylesheet\" href=\"/assets/cairn.css\">{tag}</head>\
         <body><header><span class=\"brand\">Cairn</span></header><main>{body}</main></body></html>",
        esc(title)
    );
    let mut r = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    secure(&mut r);
    if script {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(SCRIPTED_CSP));
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The console's pages: its own script file only, never inline script.
const SCRIPTED_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; \
                            form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every page and asset carries.
pub(super) fn secure(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// What a submitted form held, by name (a name may repeat: multiselect).
#[derive(Default)]
pub(super) struct Typed(pub(super) BTreeMap<String, Vec<String>>);

impl Typed {
    /// An `application/x-www-form-urlencoded` body.
    pub(super) fn parse(body: &[u8]) -> Typed {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(body).into_owned() {
            m.entry(k).or_default().push(v);
        }
        Typed(m)
    }

    /// The first value of `name`, as sent ("" when absent).
    pub(super) fn one(&self, name: &str) -> &str {
        self.0.get(name).and_then(|v| v.first()).map_or("", String::as_str)
    }

    /// The first value of `name`, trimmed.
    pub(super) fn field(&self, name: &str) -> String {
        self.one(name).trim().to_owned()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.get(name).map(|v| v.iter().map(String::as_str).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }
}

/// HTML-escapes text for an element or a quoted attribute.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a query value.
pub(super) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Percent-encodes a path segment (all but RFC 3986's unreserved).
pub(super) fn seg(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::markdown_html;

    #[test]
    fn a_draft_is_formatted_and_cannot_act() {
        let h = markdown_html(
            "# Launch\n\nWe **ship** on *Monday*.\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n\
             <script>alert(1)</script>\n\n<img src=x onerror=alert(1)> [docs](https://example.com/d?a=1&b=2) \
             [trap](javascript:alert(1)) [Trap](  JavaScript:alert(1)) ![logo](https://tracker.example/p.png)",
        );
        assert!(h.contains("<h3>Launch</h3>"), "{h}");
        assert!(h.contains("<strong>ship</strong>") && h.contains("<em>Monday</em>"), "{h}");
        assert!(h.contains("<li>one</li>") && h.contains("<td>1</td>"), "{h}");
        assert!(h.contains("<p>&lt;script&gt;alert(1)&lt;/script&gt;\n</p>") && !h.contains("<script"), "{h}");
        assert!(h.contains("&lt;img src=x onerror=alert(1)&gt;") && !h.contains("<img"), "{h}");
        assert!(h.contains(r#"<a href="https://example.com/d?a=1&amp;b=2">docs</a>"#), "{h}");
        assert!(!h.to_ascii_lowercase().contains("javascript"), "{h}");
        assert!(h.contains("trap") && h.contains("Trap") && h.contains("<em>logo</em>"), "{h}");
        assert!(!h.contains("tracker.example"), "an image requests nothing: {h}");
    }
}
