//! The console for signed-in users (issue 18, part 2, first pages): sign in
//! with an API key, then the inbox (what waits for me, each linking to the
//! request's page with my own answer token), the runs (filtered and paged
//! from the read models) and a run (status, inputs, output, error, the
//! timeline of its events from its stream).
//!
//! A session is a cookie the server can check without storing anything, so
//! any number of API processes share it: the key's id, an expiry and a MAC
//! under the token key. Every request looks the key up again (the 1 s key
//! cache), so revoking the key ends its sessions; the role is the key's, as
//! in the API. The cookie is `HttpOnly; SameSite=Strict; Path=/`, `Secure`
//! when the request came over HTTPS (`X-Forwarded-Proto: https` from the
//! proxy in front). Every form carries a CSRF token bound to the session.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State as S};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use std::fmt::Write as _;

use super::State;
use super::graph::graph_html;
use super::pages::{Typed, esc, page, page_with, secure, seg};
use crate::keys::{Key, Role};

const COOKIE: &str = "cairn_session";

/// The console's routes.
pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/inbox") }))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", axum::routing::post(sign_out))
        .route("/assets/console.js", get(script))
        .route("/ui/inbox", get(inbox))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/live", get(live))
        .route("/ui/audit", get(audit))
        .route("/ui/audit/export", get(export))
        .route("/ui/costs", get(costs))
        .route("/ui/workflows", get(workflows))
        .route("/ui/schedules", get(schedules))
        .route("/ui/deliveries", get(deliveries))
        .route("/ui/workflows/new", get(editor).post(author))
        .route("/ui/workflows/check", axum::routing::post(check))
        .route("/ui/workflows/{name}", get(workflow))
        .route("/ui/workflows/{name}/start", axum::routing::post(start))
        .route("/ui/runs/{id}/cancel", axum::routing::post(cancel))
        .route("/ui/runs/{id}/replay", get(replay))
        .route("/ui/runs/{id}/fork", axum::routing::post(fork))
        .route("/ui/runs/{id}/resume", axum::routing::post(resume))
}

/// A signed-in user.
struct Session {
    key: Key,
    /// The cookie's value (the CSRF token is derived from it).
    value: String,
}

fn mac_hex(state: &State, purpose: &str, msg: &str) -> String {
    hex::encode(state.engine.keyed_mac(purpose, msg.as_bytes()))
}

/// The CSRF token of a session.
fn csrf(state: &State, s: &Session) -> String {
    mac_hex(state, "cairn-csrf", &s.value)[..32].to_owned()
}

/// The session the request's cookie names, if it is valid: a MAC made
/// here, not expired, for a key that exists and is not revoked.
async fn session(state: &State, headers: &HeaderMap) -> Option<Session> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())?;
    let mut parts = value.rsplitn(3, '.');
    let (mac, exp, key_id) = (parts.next()?, parts.next()?, parts.next()?);
    let want = mac_hex(state, "cairn-session", &format!("{key_id}.{exp}"));
    let same = want.len() == mac.len() && want.bytes().zip(mac.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    if !same || exp.parse::<i64>().ok()? <= state.engine.clock().now().timestamp() {
        return None;
    }
    let key = state.key_by_id(key_id).await.ok()??;
    // A worker key never has a session (defence in depth: none is issued).
    if key.role == Role::Worker {
        return None;
    }
    Some(Session { key, value })
}

/// A signed-in page's user: a handler taking one is only reached with a
/// valid session; without one the browser goes to the sign-in page, which
/// brings it back to this page.
impl axum::extract::FromRequestParts<Arc<State>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &Arc<State>) -> Result<Self, Response> {
        let back = parts.uri.path_and_query().map_or("/ui", |p| p.as_str()).to_owned();
        require(state, &parts.headers, &back).await
    }
}

/// A user whose role may act (operator, admin), as [`Session`]; others get
/// the refusal page.
struct Operator(Session);

impl axum::extract::FromRequestParts<Arc<State>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &Arc<State>) -> Result<Self, Response> {
        let s = Session::from_request_parts(parts, state).await?;
        if !operates(&s) {
            return Err(acting_refusal(&s));
        }
        Ok(Operator(s))
    }
}

/// The user, or the sign-in page (with where to come back to).
async fn require(state: &State, headers: &HeaderMap, back: &str) -> Result<Session, Response> {
    match session(state, headers).await {
        Some(s) => Ok(s),
        None => Err(Redirect::to(&format!("/ui/sign-in?next={}", super::pages::enc(back))).into_response()),
    }
}

/// The frame of a signed-in page: navigation, who is signed in, sign out.
fn shell(state: &State, s: &Session, title: &str, body: &str) -> Response {
    let mut nav = String::from(
        "<nav aria-label=\"Console\"><a href=\"/ui/inbox\">Inbox</a> <a href=\"/ui/runs\">Runs</a> <a href=\"/ui/workflows\">Workflows</a> <a href=\"/ui/schedules\">Schedules</a> <a href=\"/ui/deliveries\">Deliveries</a> <a href=\"/ui/audit\">Audit</a> <a href=\"/ui/costs\">Costs</a>",
    );
    let _ = write!(
        nav,
        "<form method=\"post\" action=\"/ui/sign-out\" class=\"inline\"><input type=\"hidden\" name=\"_csrf\" value=\"{}\">\
         <span class=\"who\">{} ({})</span> <button type=\"submit\" class=\"link\">Sign out</button></form></nav>",
        csrf(state, s),
        esc(&s.key.identity),
        s.key.role.name()
    );
    page_with(StatusCode::OK, title, &format!("{nav}{body}"), true)
}

/// `GET /assets/console.js`: the catalog's event names, then the script.
async fn script() -> Response {
    static JS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let js = JS.get_or_init(|| {
        let names: Vec<&str> = cairn_events::catalog().iter().map(|e| e.event_type).collect();
        format!(
            "const CAIRN_EVENT_TYPES = {};\n{}",
            serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()),
            include_str!("../../assets/console.js")
        )
    });
    let mut r = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], js.clone()).into_response();
    secure(&mut r);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: Option<u64>,
}

/// `GET /ui/runs/{id}/live?after=N`: the run's events as server-sent
/// events, for the signed-in page (the API's `/runs/{id}/live` needs a key
/// in a header, which a browser's EventSource cannot send).
async fn live(S(state): S<Arc<State>>, headers: HeaderMap, Path(id): Path<String>, Query(q): Query<After>) -> Response {
    if session(&state, &headers).await.is_none() {
        return (StatusCode::UNAUTHORIZED, "sign in at /ui/sign-in").into_response();
    }
    let Ok(run) = id.parse::<uuid::Uuid>() else { return (StatusCode::NOT_FOUND, "no such run").into_response() };
    let stream = cairn_events::run_stream(run);
    match state.store.stream_version(&stream).await {
        Ok(0) => (StatusCode::NOT_FOUND, "no such run").into_response(),
        Ok(_) => super::live::stream(state.clone(), stream, q.after.unwrap_or(0)),
        Err(e) => unavailable(&e.to_string()),
    }
}

#[derive(Deserialize)]
struct Next {
    #[serde(default)]
    next: Option<String>,
}

/// Only a path on this server (never `//host` or a scheme).
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.contains("\\") => n.to_owned(),
        _ => "/ui/inbox".to_owned(),
    }
}

async fn sign_in_page(Query(q): Query<Next>) -> Response {
    sign_in_form(StatusCode::OK, &local(q.next.as_deref()), None)
}

fn sign_in_form(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let mut b = String::from("<h1>Sign in</h1>");
    if let Some(e) = error {
        let _ = write!(b, "<div class=\"errors\" role=\"alert\"><p>{}</p></div>", esc(e));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/ui/sign-in\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <div class=\"field\"><label for=\"f-key\">API key</label>\
         <input type=\"password\" id=\"f-key\" name=\"key\" autocomplete=\"current-password\" required aria-required=\"true\" aria-describedby=\"f-key-help\">\
         <p class=\"help\" id=\"f-key-help\">A key from <code>cairn keys create</code>; you act as its identity, with its role.</p></div>\
         <div class=\"actions\"><button type=\"submit\">Sign in</button></div></form>",
        esc(next)
    );
    page(status, "Sign in", &b)
}

/// `POST /ui/sign-in`: a key in, a session cookie out. Failures count
/// against the address like the API's (too many: refused for a while).
async fn sign_in(S(state): S<Arc<State>>, req: axum::extract::Request) -> Response {
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let headers = req.headers().clone();
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return sign_in_form(StatusCode::PAYLOAD_TOO_LARGE, "/ui/inbox", Some("The form was too large."));
    };
    let form = Typed::parse(&body);
    let get = |k: &str| form.field(k);
    let next = local(Some(&get("next")));
    if let Some(ip) = ip
        && let Some(over) = state.key_failures.over_limit(ip)
    {
        let msg = format!("Too many failed sign-ins from this address: try again in {} s.", over.retry_after);
        return sign_in_form(StatusCode::TOO_MANY_REQUESTS, &next, Some(&msg));
    }
    let key = match state.authenticate(&get("key")).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            if let Some(ip) = ip {
                state.key_failures.failed(ip);
            }
            let msg = "That key is not known or was revoked. Paste the whole key (it starts with cairn_).";
            return sign_in_form(StatusCode::UNAUTHORIZED, &next, Some(msg));
        }
        Err(e) => {
            tracing::error!(error = %e.0.detail, "cannot read the keys for a sign-in");
            return sign_in_form(StatusCode::SERVICE_UNAVAILABLE, &next, Some("Signing in is not possible just now."));
        }
    };
    if key.role == Role::Worker {
        let msg = "A worker key only polls and answers tasks; sign in with a viewer, approver, operator or admin key.";
        return sign_in_form(StatusCode::FORBIDDEN, &next, Some(msg));
    }
    let exp =
        state.engine.clock().now().timestamp() + i64::try_from(state.session_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let payload = format!("{}.{exp}", key.key_id);
    let value = format!("{payload}.{}", mac_hex(&state, "cairn-session", &payload));
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.session_ttl.as_secs(),
        if https { "; Secure" } else { "" }
    );
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /ui/sign-out` (with the session's CSRF token).
async fn sign_out(S(state): S<Arc<State>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = Typed::parse(&body);
    if let Some(s) = session(&state, &headers).await
        && !csrf_ok(&state, &s, &form)
    {
        return page(
            StatusCode::FORBIDDEN,
            "Not signed out",
            "<h1>Not signed out</h1><p>The form was not this session's (a missing or wrong CSRF token). \
             Go back, reload the page and try again.</p>",
        );
    }
    let mut r = Redirect::to("/ui/sign-in").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cairn_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// `GET /ui/inbox`: what waits for me, oldest first, each with a link to
/// answer it as me.
async fn inbox(S(state): S<Arc<State>>, s: Session) -> Response {
    let rows = match state.read().await {
        Ok(db) => cairn_projections::queries::inbox(db).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.0.detail.clone()),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let mut b = String::from("<h1>Inbox</h1>");
    let mine: Vec<_> = rows.into_iter().filter(|r| r.assignee_names().contains(&s.key.identity)).collect();
    if mine.is_empty() {
        b.push_str("<p>Nothing waits for you.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">What</th><th scope=\"col\">Kind</th><th scope=\"col\">Run</th>\
             <th scope=\"col\">Asked</th><th scope=\"col\">Deadline</th><th scope=\"col\"><span class=\"sr\">Action</span></th></tr></thead><tbody>",
        );
        for r in &mine {
            let Ok(run) = r.run_id.parse::<uuid::Uuid>() else { continue };
            // My own answer token for the request's current attempt.
            let Ok((st, _)) = super::runs::load(&state, run).await else { continue };
            let Some(h) = st.people.get(&r.step_id) else { continue };
            let (attempt, what) = (h.attempt, h.title.clone().filter(|t| !t.trim().is_empty()));
            let token = state.engine.answer_token(run, &r.step_id, attempt, &s.key.identity);
            let link = format!("/runs/{run}/steps/{}?token={token}", seg(&r.step_id));
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td><a href=\"/ui/runs/{run}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td><a href=\"{}\">Answer</a></td></tr>",
                esc(what.as_deref().or(r.summary.as_deref()).unwrap_or(&r.step_id)),
                esc(&r.kind),
                &r.run_id[..8],
                esc(&r.requested_at),
                esc(r.deadline.as_deref().unwrap_or("—")),
                esc(&link)
            );
        }
        b.push_str("</tbody></table>");
    }
    shell(&state, &s, "Inbox", &b)
}

#[derive(Deserialize)]
struct RunsQ {
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    /// Started on or after this day (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    since: Option<String>,
    /// Started on or before this day (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    until: Option<String>,
}

/// A day typed in a filter (`YYYY-MM-DD`); `Err` says what was wrong.
fn parse_day(day: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(day.trim(), "%Y-%m-%d").map_err(|_| format!("`{day}` is not a day (YYYY-MM-DD)"))
}

/// A day's start as the read models write times; `Err` for a day that
/// does not parse.
fn day_start(day: &str, plus_days: i64) -> Result<String, String> {
    let d = parse_day(day)?;
    let t = (d + chrono::Duration::days(plus_days)).and_hms_opt(0, 0, 0).ok_or("no such time")?.and_utc();
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

const STATUSES: [&str; 5] = ["running", "waiting", "completed", "failed", "cancelled"];

/// `GET /ui/runs`: newest first, by workflow and status, 50 a page.
async fn runs(S(state): S<Arc<State>>, s: Session, Query(q): Query<RunsQ>) -> Response {
    let workflow = q.workflow.filter(|w| !w.is_empty());
    let status = q.status.filter(|x| STATUSES.contains(&x.as_str()));
    let before = q.cursor.as_deref().and_then(|c| c.split_once('~')).map(|(a, b)| (a.to_owned(), b.to_owned()));
    let since_day = q.since.filter(|d| !d.trim().is_empty());
    let until_day = q.until.filter(|d| !d.trim().is_empty());
    let mut bad = Vec::new();
    let mut bound = |day: &Option<String>, plus: i64| match day.as_deref().map(|d| day_start(d, plus)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            bad.push(e);
            None
        }
        None => None,
    };
    let (since, until) = (bound(&since_day, 0), bound(&until_day, 1));
    let f = cairn_projections::queries::RunFilter {
        workflow: workflow.clone(),
        status: status.clone(),
        since,
        until,
        before,
        limit: 51,
    };
    let rows = match state.read().await {
        Ok(db) => cairn_projections::queries::runs_page(db, &f).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.0.detail.clone()),
    };
    let mut rows = match rows {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let more = rows.len() > 50;
    rows.truncate(50);
    let mut b = String::from("<h1>Runs</h1><form method=\"get\" action=\"/ui/runs\" class=\"filters\">");
    let _ = write!(
        b,
        "<label for=\"q-workflow\">Workflow</label> <input type=\"text\" id=\"q-workflow\" name=\"workflow\" value=\"{}\"> \
         <label for=\"q-status\">Status</label> <select id=\"q-status\" name=\"status\"><option value=\"\">any</option>",
        esc(workflow.as_deref().unwrap_or(""))
    );
    for x in STATUSES {
        let sel = if status.as_deref() == Some(x) { " selected" } else { "" };
        let _ = write!(b, "<option{sel}>{x}</option>");
    }
    let _ = write!(
        b,
        "</select> <label for=\"q-since\">From</label> <input type=\"date\" id=\"q-since\" name=\"since\" value=\"{}\"> \
         <label for=\"q-until\">To</label> <input type=\"date\" id=\"q-until\" name=\"until\" value=\"{}\"> <button type=\"submit\">Filter</button></form>",
        esc(since_day.as_deref().unwrap_or("")),
        esc(until_day.as_deref().unwrap_or(""))
    );
    for e in &bad {
        let _ = write!(b, "<p class=\"errors\" role=\"alert\">{}; that bound was left out.</p>", esc(e));
    }
    if rows.is_empty() {
        b.push_str("<p>No runs match.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Workflow</th><th scope=\"col\">Status</th>\
             <th scope=\"col\">Step</th><th scope=\"col\">Started</th><th scope=\"col\">By</th></tr></thead><tbody>",
        );
        for r in &rows {
            let _ = write!(
                b,
                "<tr><td><a href=\"/ui/runs/{0}\"><code>{1}</code></a></td><td>{2} v{3}</td><td class=\"status-{4}\">{4}</td><td>{5}</td><td>{6}</td><td>{7}</td></tr>",
                esc(&r.run_id),
                esc(r.run_id.get(..8).unwrap_or(&r.run_id)),
                esc(&r.workflow),
                r.version,
                esc(&r.status),
                esc(r.current_step.as_deref().or(r.failed_step.as_deref()).unwrap_or("")),
                esc(&r.started_at),
                esc(&r.started_by)
            );
        }
        b.push_str("</tbody></table>");
    }
    if more && let Some(last) = rows.last() {
        let mut next =
            format!("/ui/runs?cursor={}", super::pages::enc(&format!("{}~{}", last.started_at, last.run_id)));
        if let Some(w) = &workflow {
            let _ = write!(next, "&workflow={}", super::pages::enc(w));
        }
        if let Some(x) = &status {
            let _ = write!(next, "&status={x}");
        }
        for (k, v) in [("since", &since_day), ("until", &until_day)] {
            if let Some(v) = v {
                let _ = write!(next, "&{k}={}", super::pages::enc(v));
            }
        }
        let _ = write!(b, "<p><a href=\"{}\" rel=\"next\">Older runs</a></p>", esc(&next));
    }
    shell(&state, &s, "Runs", &b)
}

/// `GET /ui/runs/{id}`: the run from its stream.
async fn run(S(state): S<Arc<State>>, s: Session, Path(id): Path<String>) -> Response {
    let Ok(run) = id.parse::<uuid::Uuid>() else { return not_found(&state, &s, &id) };
    let (st, events) = match super::runs::load(&state, run).await {
        Ok(x) => x,
        Err(e) if e.0.status == 404 => return not_found(&state, &s, &id),
        Err(e) => return unavailable(&e.0.detail),
    };
    let status = super::runs::status_name(&st);
    let mut b = format!(
        "<div id=\"live\" data-stream=\"/ui/runs/{run}/live\" data-after=\"{}\"><h1>Run <code>{run}</code></h1><div id=\"run-head\" aria-live=\"polite\"><p class=\"meta\">Workflow <strong>{}</strong> v{} · status <strong class=\"status-{status}\">{status}</strong></p>",
        events.len(),
        esc(&st.workflow),
        st.workflow_version
    );
    let json = |v: &serde_json::Value| esc(&serde_json::to_string_pretty(v).unwrap_or_default());
    let _ = write!(b, "<h2>Inputs</h2><pre tabindex=\"0\">{}</pre>", json(&st.inputs));
    if let Some(out) = &st.output {
        let _ = write!(b, "<h2>Output</h2><pre tabindex=\"0\">{}</pre>", json(out));
    }
    if let Some((kind, message, step)) = &st.error {
        let _ = write!(
            b,
            "<h2>Error</h2><p class=\"error\"><code>{}</code>{}: {}</p>",
            esc(kind),
            step.as_deref().map(|x| format!(" at step <code>{}</code>", esc(x))).unwrap_or_default(),
            esc(message)
        );
    }
    for (step, h) in st.waiting_for_people() {
        let mine = h.assignees.contains(&s.key.identity) && !h.decided(&s.key.identity);
        let _ = write!(
            b,
            "<p class=\"notice\">Waiting at <code>{}</code> for {} ({})",
            esc(step),
            esc(&h.assignees.join(", ")),
            esc(&h.kind)
        );
        if mine {
            let token = state.engine.answer_token(run, step, h.attempt, &s.key.identity);
            let _ = write!(b, " · <a href=\"/runs/{run}/steps/{}?token={token}\">answer as you</a>", seg(step));
        }
        b.push_str("</p>");
    }
    b.push_str("</div><div id=\"run-steps\">");
    match state.engine.recorded_definition(&st.workflow, st.workflow_version).await {
        Ok(w) => b.push_str(&graph_html(&w, Some((&st, &events)))),
        Err(e) => {
            let _ = write!(b, "<p class=\"notice\">The workflow's graph cannot be drawn: {}</p>", esc(&e.to_string()));
        }
    }
    b.push_str("</div><div id=\"run-actions\">");
    let _ = write!(
        b,
        "<p><a href=\"/ui/runs/{run}/replay\">Replay check</a>: does today's engine make every decision this log recorded?</p>"
    );
    if operates(&s) {
        let tok = csrf(&state, &s);
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/ui/runs/{run}/fork\" class=\"filters\"><input type=\"hidden\" name=\"_csrf\" value=\"{tok}\">\
             <label for=\"f-at\">Fork from step</label> <input type=\"text\" id=\"f-at\" name=\"at\" required aria-required=\"true\"> \
             <button type=\"submit\" class=\"secondary\">Fork</button> <span class=\"help\">A new run from that step, the outputs before it carried over.</span></form>"
        );
        if !st.status.is_terminal() {
            let _ = write!(
                b,
                "<section aria-labelledby=\"act-h\"><h2 id=\"act-h\">Actions</h2><form method=\"post\" action=\"/ui/runs/{run}/cancel\">\
                 <input type=\"hidden\" name=\"_csrf\" value=\"{tok}\"><div class=\"field\"><label for=\"f-reason\">Reason <span class=\"optional\">(optional)</span></label>\
                 <input type=\"text\" id=\"f-reason\" name=\"reason\"></div><button type=\"submit\" class=\"secondary\">Cancel the run</button></form></section>"
            );
        } else if status != "completed" {
            let _ = write!(
                b,
                "<section aria-labelledby=\"act-h\"><h2 id=\"act-h\">Actions</h2><form method=\"post\" action=\"/ui/runs/{run}/resume\">\
                 <input type=\"hidden\" name=\"_csrf\" value=\"{tok}\"><input type=\"hidden\" name=\"step\" value=\"plan\">{}\
                 <button type=\"submit\">Plan a resume</button> <span class=\"help\">Shows what would run again; nothing is recorded until you confirm.</span></form></section>",
                resume_fields(status == "cancelled")
            );
        }
    }
    let _ = write!(
        b,
        "</div><h2>Timeline</h2><p class=\"meta\"><span id=\"event-count\">{}</span> events, oldest first</p><ol class=\"timeline\" id=\"timeline\">",
        events.len()
    );
    for e in &events {
        let payload = e.payload_value().unwrap_or_default();
        let meta: serde_json::Value = serde_json::from_str(&e.metadata).unwrap_or_default();
        let actor = meta.get("actor").and_then(|a| a.as_str()).unwrap_or("");
        let step = payload.get("step_id").and_then(|a| a.as_str()).unwrap_or("");
        let _ = write!(
            b,
            "<li><span class=\"v\">{}</span> <time>{}</time> <strong>{}</strong>{}{}{}<details><summary>payload</summary><pre tabindex=\"0\">{}</pre></details></li>",
            e.stream_version,
            esc(&e.recorded_at),
            esc(&e.event_type),
            if step.is_empty() { String::new() } else { format!(" <code>{}</code>", esc(step)) },
            if actor.is_empty() { String::new() } else { format!(" by {}", esc(actor)) },
            gist(&e.event_type, &payload),
            json(&payload)
        );
    }
    b.push_str("</ol></div>");
    shell(&state, &s, &format!("Run {}", &id[..8.min(id.len())]), &b)
}

fn not_found(state: &State, s: &Session, id: &str) -> Response {
    let mut r = shell(
        state,
        s,
        "No such run",
        &format!("<h1>No such run</h1><p>No run has the id <code>{}</code>.</p>", esc(id)),
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn unavailable(detail: &str) -> Response {
    tracing::error!(error = %detail, "a console page cannot be shown");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "<h1>Unavailable</h1><p>This page cannot be shown just now. Try again in a moment.</p>",
    )
}

/// Whether the user may act on runs (cancel, resume), as in the API.
fn operates(s: &Session) -> bool {
    matches!(s.key.role, Role::Admin | Role::Operator)
}

/// The resume form's choices.
fn resume_fields(cancelled: bool) -> String {
    let mut f = String::from(
        "<div class=\"field\"><label for=\"f-policy\">Policy</label><select id=\"f-policy\" name=\"policy\">\
         <option value=\"failed-only\">failed-only: the failed step; completed steps only if what they read changed</option>\
         <option value=\"downstream\">downstream: the failed step and everything after it</option></select></div>\
         <div class=\"field\"><label for=\"f-from\">From step <span class=\"optional\">(optional: default, the step that failed)</span></label>\
         <input type=\"text\" id=\"f-from\" name=\"from\"></div>",
    );
    if cancelled {
        f.push_str("<input type=\"hidden\" name=\"force\" value=\"true\">");
    }
    f
}

/// A form's fields and the user it comes from, CSRF and role checked;
/// otherwise the page to show instead.
async fn acting(state: &State, headers: &HeaderMap, body: &[u8], back: &str) -> Result<(Session, Typed), Response> {
    let s = require(state, headers, back).await?;
    let form = Typed::parse(body);
    if !csrf_ok(state, &s, &form) {
        let body = "<h1>Not done</h1><p>The form was not this session's (a missing or wrong CSRF token). \
                    Go back, reload the page and try again.</p>";
        return Err(page(StatusCode::FORBIDDEN, "Not done", body));
    }
    if !operates(&s) {
        return Err(acting_refusal(&s));
    }
    Ok((s, form))
}

/// Whether a form carries its session's CSRF token.
fn csrf_ok(state: &State, s: &Session, form: &Typed) -> bool {
    form.one("_csrf") == csrf(state, s)
}

/// [`acting`] on run `id`: the user, the form, the run and its page.
async fn acting_on_run(
    state: &State,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
) -> Result<(Session, Typed, uuid::Uuid, String), Response> {
    let back = format!("/ui/runs/{}", seg(id));
    let (s, form) = acting(state, headers, body, &back).await?;
    match id.parse::<uuid::Uuid>() {
        Ok(run) => Ok((s, form, run, back)),
        Err(_) => Err(not_found(state, &s, id)),
    }
}

/// A page saying an action was not done, and why.
fn refused(state: &State, s: &Session, title: &str, why: &str, back: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p><p><a href=\"{back}\">Back to the run</a></p>", esc(title), esc(why));
    let mut r = shell(state, s, title, &body);
    *r.status_mut() = StatusCode::CONFLICT;
    r
}

/// `POST /ui/runs/{id}/cancel`.
async fn cancel(
    S(state): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (s, form, run, back) = match acting_on_run(&state, &headers, &id, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reason = Some(form.field("reason")).filter(|r| !r.is_empty());
    match state.engine.cancel(run, &s.key.identity, reason).await {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => refused(&state, &s, "Not cancelled", &e.to_string(), &back),
    }
}

/// `POST /ui/runs/{id}/resume`: `step=plan` shows the plan (nothing
/// recorded); `step=confirm` resumes, only if the run is where the plan
/// shown was made (its stream version), else shows the plan as it is now.
async fn resume(
    S(state): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    use cairn_runtime::recovery::ResumeRequest;
    let (s, form, run, back) = match acting_on_run(&state, &headers, &id, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let get = |k: &str| form.field(k);
    let mut req = ResumeRequest::new(&s.key.identity);
    req.from = Some(get("from")).filter(|f| !f.is_empty());
    req.policy = if get("policy") == "downstream" {
        cairn_runtime::run::Policy::Downstream
    } else {
        cairn_runtime::run::Policy::FailedOnly
    };
    req.force = get("force") == "true";
    req.reason = Some(get("reason")).filter(|r| !r.is_empty());
    let plan = match state.engine.plan_resume(run, &req).await {
        Ok(p) => p,
        Err(e) => return refused(&state, &s, "Cannot resume", &e.to_string(), &back),
    };
    let confirmed = get("step") == "confirm";
    if confirmed && get("at_version").parse::<u64>().ok() == Some(plan.at_version) {
        return match state.engine.resume(run, &req).await {
            Ok(_) => {
                state.driver.kick(run);
                Redirect::to(&back).into_response()
            }
            Err(e) => refused(&state, &s, "Not resumed", &e.to_string(), &back),
        };
    }
    let mut b = format!("<h1>Resume plan for run <code>{run}</code></h1>");
    if confirmed {
        b.push_str(
            "<p class=\"notice\" role=\"alert\">The run changed since that plan was made; nothing was resumed. \
             This is the plan now: review it again.</p>",
        );
    }
    let _ = write!(
        b,
        "<p class=\"meta\">Workflow <strong>{}</strong> v{} · status {} · from <code>{}</code> · policy {}</p>",
        esc(&plan.workflow),
        plan.workflow_version,
        esc(&plan.status),
        esc(&plan.from_step),
        esc(&plan.policy)
    );
    b.push_str(
        "<table class=\"plan\"><thead><tr><th scope=\"col\">Step</th><th scope=\"col\">Kind</th>\
         <th scope=\"col\">In the resume</th><th scope=\"col\">Why</th></tr></thead><tbody>",
    );
    for l in &plan.lines {
        let mark = serde_json::to_value(l.mark).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = write!(
            b,
            "<tr class=\"mark-{mark}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.step),
            esc(&l.kind),
            esc(&mark.replace('_', " ")),
            esc(&l.note)
        );
    }
    b.push_str("</tbody></table>");
    if !plan.warnings.is_empty() {
        b.push_str("<div class=\"errors\"><p>Before you resume:</p><ul>");
        for w in &plan.warnings {
            let _ = write!(b, "<li>{}</li>", esc(w));
        }
        b.push_str("</ul></div>");
    }
    let keep = |k: &str| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(&get(k)));
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/ui/runs/{run}/resume\"><input type=\"hidden\" name=\"_csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"step\" value=\"confirm\"><input type=\"hidden\" name=\"at_version\" value=\"{}\">{}{}{}\
         <div class=\"field\"><label for=\"f-why\">Reason <span class=\"optional\">(optional, recorded)</span></label>\
         <input type=\"text\" id=\"f-why\" name=\"reason\"></div>\
         <div class=\"actions\"><button type=\"submit\">Resume as planned</button> <a href=\"{back}\">Back to the run</a></div></form>",
        csrf(&state, &s),
        plan.at_version,
        keep("from"),
        keep("policy"),
        keep("force")
    );
    shell(&state, &s, "Resume plan", &b)
}

/// `GET /ui/workflows`: every workflow, its newest version, archived or not.
async fn workflows(S(state): S<Arc<State>>, s: Session) -> Response {
    let list = match super::workflows::list(S(state.clone())).await {
        Ok(l) => l.0.items,
        Err(e) => return unavailable(&e.0.detail),
    };
    let mut b = String::from("<h1>Workflows</h1><p><a href=\"/ui/workflows/new\">Author a workflow</a></p>");
    if list.is_empty() {
        b.push_str(
            "<p>No workflow is published yet (<code>cairn publish FILE</code> or <code>POST /workflows</code>).</p>",
        );
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Newest version</th>\
             <th scope=\"col\">Published</th><th scope=\"col\">State</th></tr></thead><tbody>",
        );
        for w in &list {
            let _ = write!(
                b,
                "<tr><td><a href=\"/ui/workflows/{}\">{}</a></td><td>v{}</td><td>{}</td><td>{}</td></tr>",
                seg(&w.name),
                esc(&w.name),
                w.latest_version,
                esc(&w.updated_at),
                if w.archived { "archived" } else { "active" }
            );
        }
        b.push_str("</tbody></table>");
    }
    shell(&state, &s, "Workflows", &b)
}

/// `GET /ui/schedules`: every schedule with its state, next firings and
/// last firing (its run linked).
async fn schedules(S(state): S<Arc<State>>, s: Session) -> Response {
    let list = match super::schedules::list(S(state.clone())).await {
        Ok(l) => l.0.items,
        Err(e) => return unavailable(&e.0.detail),
    };
    let mut b = String::from("<h1>Schedules</h1>");
    if list.is_empty() {
        b.push_str(
            "<p>No schedule is defined (<code>cairn schedules create</code> or <code>PUT /schedules/{name}</code>).</p>",
        );
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">Schedule</th><th scope=\"col\">Workflow</th><th scope=\"col\">When</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Next firings (UTC)</th><th scope=\"col\">Last firing</th>\
             <th scope=\"col\">Fired / skipped</th></tr></thead><tbody>",
        );
        for v in &list {
            let next = if v.next_firings.is_empty() {
                "—".to_owned()
            } else {
                v.next_firings.iter().take(3).map(|t| esc(t)).collect::<Vec<_>>().join("<br>")
            };
            let last = match (&v.last_fired_at, v.last_run_id) {
                (Some(at), Some(run)) => format!("<a href=\"/ui/runs/{run}\">{}</a>", esc(at)),
                _ => "—".to_owned(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td><a href=\"/ui/workflows/{}\">{}</a></td><td><code>{}</code> in {} ({})</td><td>{}{}</td>\
                 <td>{next}</td><td>{last}</td><td>{} / {}</td></tr>",
                esc(&v.name),
                seg(&v.workflow),
                esc(&v.workflow),
                esc(&v.cron),
                esc(&v.timezone),
                esc(&v.overlap),
                esc(&v.state),
                v.paused_reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default(),
                v.fired,
                v.skipped
            );
        }
        b.push_str("</tbody></table>");
    }
    shell(&state, &s, "Schedules", &b)
}

#[derive(Deserialize)]
struct DeliveriesQ {
    #[serde(default)]
    status: Option<String>,
}

/// `GET /ui/deliveries?status=dead`: the delivery log of the lifecycle
/// subscriptions and hooks, newest first (operators and admins).
async fn deliveries(S(state): S<Arc<State>>, s: Session, Query(q): Query<DeliveriesQ>) -> Response {
    if !s.key.role.may(Role::Operator) {
        return page_with(
            StatusCode::FORBIDDEN,
            "Deliveries",
            "<h1>Deliveries</h1><p>The delivery log is for operators and admins.</p>",
            true,
        );
    }
    let status = q.status.filter(|x| matches!(x.as_str(), "pending" | "delivered" | "dead"));
    let list = match crate::commands::subscriptions::deliveries(&state.engine, status.as_deref(), None, 200).await {
        Ok(l) => l,
        Err(e) => return unavailable(&e.to_string()),
    };
    let mut b = String::from(
        "<h1>Deliveries</h1><p><a href=\"/ui/deliveries\">All</a> · <a href=\"/ui/deliveries?status=pending\">Pending</a> · \
         <a href=\"/ui/deliveries?status=dead\">Dead</a> (put one back with <code>cairn deliveries retry ID</code>)</p>",
    );
    if list.is_empty() {
        b.push_str("<p>No delivery here.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">Delivery</th><th scope=\"col\">Event</th><th scope=\"col\">Run</th>\
             <th scope=\"col\">Status</th><th scope=\"col\">Attempts</th><th scope=\"col\">Last error</th>\
             <th scope=\"col\">Next attempt</th></tr></thead><tbody>",
        );
        for d in &list {
            let run = d.run_id.map_or_else(|| "—".to_owned(), |r| format!("<a href=\"/ui/runs/{r}\">{r}</a>"));
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{run}</td><td class=\"status-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.id),
                esc(&d.event),
                esc(&d.status),
                esc(&d.status),
                d.attempts,
                esc(d.last_error.as_deref().unwrap_or("")),
                esc(d.next_at.as_deref().unwrap_or("—")),
            );
        }
        b.push_str("</tbody></table>");
    }
    shell(&state, &s, "Deliveries", &b)
}

#[derive(Deserialize)]
struct VersionQ {
    #[serde(default)]
    version: Option<u32>,
}

/// `GET /ui/workflows/{name}?version=N`: versions, the source of one (the
/// newest by default), its graph, and a form to start a run from its
/// `inputs` schema (operators and admins).
async fn workflow(
    S(state): S<Arc<State>>,
    s: Session,
    Path(name): Path<String>,
    Query(q): Query<VersionQ>,
) -> Response {
    workflow_page(&state, &s, &name, q.version, &Typed::default(), None).await
}

/// The workflow page, with what a refused start form held and why.
async fn workflow_page(
    state: &State,
    s: &Session,
    name: &str,
    version: Option<u32>,
    typed: &Typed,
    error: Option<&str>,
) -> Response {
    let rec = match super::workflows::recorded(state, name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let mut r = shell(
                state,
                s,
                "No such workflow",
                &format!("<h1>No such workflow</h1><p>No workflow is named <code>{}</code>.</p>", esc(name)),
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
        Err(e) => return unavailable(&e.0.detail),
    };
    let v = version.unwrap_or(rec.view.latest_version);
    let Some(i) = rec.view.versions.iter().position(|x| x.version == v) else {
        let mut r = shell(
            state,
            s,
            "No such version",
            &format!("<h1>No such version</h1><p><code>{}</code> has no version {v}.</p>", esc(name)),
        );
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let mut b = format!(
        "<h1>Workflow {}</h1><p class=\"meta\">Version {v} of {}{}</p>",
        esc(name),
        rec.view.latest_version,
        if rec.view.archived { " · archived: takes no new runs" } else { "" }
    );
    if !rec.view.archived {
        let _ = write!(
            b,
            "<p><a href=\"/ui/workflows/new?from={}\">Edit as a new version</a></p>",
            super::pages::enc(name)
        );
    }
    let w = state.engine.recorded_definition(name, v).await;
    if let Ok(w) = &w
        && operates(s)
        && !rec.view.archived
    {
        b.push_str(&start_form(state, s, name, v, w, typed, error));
    }
    b.push_str("<h2>Versions</h2><table><thead><tr><th scope=\"col\">Version</th><th scope=\"col\">Published</th><th scope=\"col\">By</th><th scope=\"col\">Definition hash</th></tr></thead><tbody>");
    for x in rec.view.versions.iter().rev() {
        let _ = write!(
            b,
            "<tr><td><a href=\"/ui/workflows/{0}?version={1}\">v{1}</a></td><td>{2}</td><td>{3}</td><td><code>{4}</code></td></tr>",
            seg(name),
            x.version,
            esc(&x.published_at),
            esc(&x.published_by),
            esc(x.definition_hash.get(..16).unwrap_or(&x.definition_hash))
        );
    }
    b.push_str("</tbody></table>");
    match &w {
        Ok(w) => b.push_str(&graph_html(w, None)),
        Err(e) => {
            let _ = write!(b, "<p class=\"notice\">This version no longer compiles: {}</p>", esc(&e.to_string()));
        }
    }
    let _ = write!(
        b,
        "<h2>Source (v{v})</h2><pre class=\"source\" tabindex=\"0\">{}</pre>",
        esc(rec.sources.get(i).map_or("", String::as_str))
    );
    let mut r = shell(state, s, &format!("Workflow {name}"), &b);
    if error.is_some() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    r
}

/// A form to start a run, its fields from the workflow's `inputs` schema:
/// text, numbers, yes/no, and JSON for objects and lists.
fn start_form(
    state: &State,
    s: &Session,
    name: &str,
    v: u32,
    w: &cairn_runtime::Workflow,
    typed: &Typed,
    error: Option<&str>,
) -> String {
    let mut b = format!(
        "<section aria-labelledby=\"start-h\"><h2 id=\"start-h\">Start a run</h2><form method=\"post\" action=\"/ui/workflows/{}/start\">\
         <input type=\"hidden\" name=\"_csrf\" value=\"{}\"><input type=\"hidden\" name=\"_version\" value=\"{v}\">",
        seg(name),
        csrf(state, s)
    );
    if let Some(e) = error {
        let _ = write!(
            b,
            "<div class=\"errors\" role=\"alert\" id=\"errors\"><p>Nothing was started: {}</p></div>",
            esc(e)
        );
    }
    let schema = w.inputs_schema.clone().unwrap_or(serde_json::Value::Null);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let props = schema.get("properties").and_then(|p| p.as_object()).cloned().unwrap_or_default();
    for (field, spec) in &props {
        let id = format!("i-{field}");
        let ty = spec.get("type").and_then(|t| t.as_str()).unwrap_or("string");
        let req = required.contains(&field.as_str());
        let default =
            spec.get("default").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)).unwrap_or_default();
        let value = if typed.0.contains_key(field.as_str()) { typed.one(field).to_owned() } else { default };
        let help = spec.get("description").and_then(|d| d.as_str());
        let described = if help.is_some() { format!(" aria-describedby=\"{id}-help\"") } else { String::new() };
        let mark = if req { " <span class=\"required\">(required)</span>" } else { "" };
        let _ = write!(b, "<div class=\"field\">");
        match ty {
            "boolean" => {
                let _ = write!(b, "<fieldset{described}><legend>{}{mark}</legend>", esc(field));
                for (val, text) in [("true", "Yes"), ("false", "No")] {
                    let on = if value == val { " checked" } else { "" };
                    let _ = write!(
                        b,
                        "<label class=\"choice\" for=\"{id}-{val}\"><input type=\"radio\" id=\"{id}-{val}\" name=\"{}\" value=\"{val}\"{on}> {text}</label>",
                        esc(field)
                    );
                }
                b.push_str("</fieldset>");
            }
            "object" | "array" => {
                let _ = write!(
                    b,
                    "<label for=\"{id}\">{} <span class=\"optional\">(JSON)</span>{mark}</label><textarea id=\"{id}\" name=\"{}\" rows=\"4\"{described}>{}</textarea>",
                    esc(field),
                    esc(field),
                    esc(&value)
                );
            }
            _ => {
                let kind = if ty == "number" || ty == "integer" { "number\" step=\"any" } else { "text" };
                let _ = write!(
                    b,
                    "<label for=\"{id}\">{}{mark}</label><input type=\"{kind}\" id=\"{id}\" name=\"{}\" value=\"{}\"{described}>",
                    esc(field),
                    esc(field),
                    esc(&value)
                );
            }
        }
        if let Some(h) = help {
            let _ = write!(b, "<p class=\"help\" id=\"{id}-help\">{}</p>", esc(h));
        }
        b.push_str("</div>");
    }
    if props.is_empty() {
        b.push_str("<p class=\"help\">This workflow takes no inputs.</p>");
    }
    b.push_str("<div class=\"actions\"><button type=\"submit\">Start</button></div></form></section>");
    b
}

/// `POST /ui/workflows/{name}/start`: the inputs typed by the schema (what
/// does not parse is passed on as typed, for the schema to refuse with its
/// message); the run's page once started.
async fn start(
    S(state): S<Arc<State>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let back = format!("/ui/workflows/{}", seg(&name));
    let (s, typed) = match acting(&state, &headers, &body, &back).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let get = |k: &str| typed.field(k);
    let Ok(version) = get("_version").parse::<u32>() else {
        return workflow_page(&state, &s, &name, None, &typed, Some("the form named no version")).await;
    };
    let w = match state.engine.definition(&name, version).await {
        Ok(w) => w,
        Err(e) => return workflow_page(&state, &s, &name, Some(version), &typed, Some(&e.to_string())).await,
    };
    let props = w
        .inputs_schema
        .as_ref()
        .and_then(|x| x.get("properties"))
        .and_then(|p| p.as_object())
        .cloned()
        .unwrap_or_default();
    let mut inputs = serde_json::Map::new();
    for (field, spec) in &props {
        let raw = get(field);
        if raw.is_empty() {
            continue;
        }
        let ty = spec.get("type").and_then(|t| t.as_str()).unwrap_or("string");
        let v = match ty {
            "integer" => raw.parse::<i64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::String(raw)),
            "number" => raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(serde_json::Value::String(raw), serde_json::Value::Number),
            "boolean" => match raw.as_str() {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                _ => serde_json::Value::String(raw),
            },
            "object" | "array" => match serde_json::from_str(&raw) {
                Ok(v) => v,
                Err(e) => {
                    let msg = format!("`{field}` is not JSON: {e}");
                    return workflow_page(&state, &s, &name, Some(version), &typed, Some(&msg)).await;
                }
            },
            _ => serde_json::Value::String(raw),
        };
        inputs.insert(field.clone(), v);
    }
    let opts = cairn_runtime::Start { drive: state.driver.drives(), ..Default::default() };
    match state.engine.start_with(&w, version, serde_json::Value::Object(inputs), &s.key.identity, opts).await {
        Ok((id, started)) => {
            let _ = state.driver.kick_started(id, started, false);
            Redirect::to(&format!("/ui/runs/{id}")).into_response()
        }
        Err(e) => workflow_page(&state, &s, &name, Some(version), &typed, Some(&e.to_string())).await,
    }
}

#[derive(Deserialize)]
struct From {
    #[serde(default)]
    from: Option<String>,
}

/// `GET /ui/workflows/new?from=NAME`: the editor, empty or holding the
/// newest source of NAME (a new version of it).
async fn editor(S(state): S<Arc<State>>, s: Session, Query(q): Query<From>) -> Response {
    let source = match q.from.as_deref() {
        Some(name) => match super::workflows::recorded(&state, name).await {
            Ok(Some(r)) => r.sources.last().cloned().unwrap_or_default(),
            _ => String::new(),
        },
        None => String::new(),
    };
    editor_page(&state, &s, &source, None, None)
}

/// The editor with what `check` found (`None`: not checked yet).
fn editor_page(
    state: &State,
    s: &Session,
    source: &str,
    checked: Option<Result<&cairn_runtime::Workflow, &[cairn_runtime::lang::Diagnostic]>>,
    not_published: Option<&str>,
) -> Response {
    let mut b = String::from(
        "<h1>Author a workflow</h1><p class=\"help\">Paste or edit the YAML (docs/workflow-language.md), check it, look at its graph, then publish: a new workflow, or a new version of the one it names.</p>",
    );
    let mut status = StatusCode::OK;
    if let Some(why) = not_published {
        status = StatusCode::CONFLICT;
        let _ = write!(b, "<div class=\"errors\" role=\"alert\"><p>Not published: {}</p></div>", esc(why));
    }
    match checked {
        Some(Err(d)) => {
            status = StatusCode::UNPROCESSABLE_ENTITY;
            let _ = write!(
                b,
                "<div class=\"errors\" role=\"alert\" id=\"diagnostics\"><p>{} to fix; nothing was published.</p><ul>",
                if d.len() == 1 { "One problem".to_owned() } else { format!("{} problems", d.len()) }
            );
            for x in d {
                let _ = write!(
                    b,
                    "<li><a href=\"#f-source\">line {}, column {}</a>: {} <code>{}</code>{}</li>",
                    x.line,
                    x.column,
                    esc(&x.message),
                    esc(x.code),
                    x.help
                        .as_deref()
                        .map(|h| format!("<br><span class=\"help\">{}</span>", esc(h)))
                        .unwrap_or_default()
                );
            }
            b.push_str("</ul></div>");
        }
        Some(Ok(w)) => {
            let _ = write!(
                b,
                "<p class=\"notice\" role=\"status\" id=\"diagnostics\">No problems: <strong>{}</strong> is ready to publish.</p>",
                esc(&w.name)
            );
        }
        None => {}
    }
    let tok = csrf(state, s);
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/ui/workflows/new\"><input type=\"hidden\" name=\"_csrf\" value=\"{tok}\">\
         <div class=\"field\"><label for=\"f-source\">Definition (YAML)</label><textarea id=\"f-source\" name=\"source\" rows=\"20\" spellcheck=\"false\" class=\"source\">{}</textarea></div>\
         <div id=\"live-diagnostics\" aria-live=\"polite\"></div><div class=\"actions\"><button type=\"submit\" name=\"_action\" value=\"check\" class=\"secondary\">Check</button>{}</div></form>",
        esc(source),
        if matches!(checked, Some(Ok(_))) && operates(s) {
            " <button type=\"submit\" name=\"_action\" value=\"publish\">Publish</button>"
        } else {
            ""
        }
    );
    if let Some(Ok(w)) = checked {
        b.push_str(&graph_html(w, None));
    }
    let mut r = shell(state, s, "Author a workflow", &b);
    *r.status_mut() = status;
    r
}

/// `POST /ui/workflows/new`: `check` compiles and shows every diagnostic
/// (line and column) or the graph; `publish` (operators, admins) publishes
/// a definition that checks, then opens its page.
async fn author(S(state): S<Arc<State>>, s: Session, body: axum::body::Bytes) -> Response {
    let form = Typed::parse(&body);
    let get = |k: &str| form.one(k).to_owned();
    if !csrf_ok(&state, &s, &form) {
        let body = "<h1>Not done</h1><p>The form was not this session's (a missing or wrong CSRF token). Go back, reload the page and try again.</p>";
        return page(StatusCode::FORBIDDEN, "Not done", body);
    }
    let source = get("source");
    let w = match super::workflows::compile(&state, &source) {
        Ok(w) => w,
        Err(d) => return editor_page(&state, &s, &source, Some(Err(&d)), None),
    };
    if get("_action") != "publish" {
        return editor_page(&state, &s, &source, Some(Ok(&w)), None);
    }
    if !operates(&s) {
        return acting_refusal(&s);
    }
    let refused = |why: &str| editor_page(&state, &s, &source, Some(Ok(&w)), Some(why));
    match super::workflows::recorded(&state, &w.name).await {
        Ok(Some(r)) if r.view.archived => {
            return refused(&format!("`{}` is archived; it takes no new versions", w.name));
        }
        Ok(_) => {}
        Err(e) => return unavailable(&e.0.detail),
    }
    if let Err(e) = state.engine.check_children(&w).await {
        return refused(&e.to_string());
    }
    match state.engine.publish(&w, &s.key.identity).await {
        Ok(v) => Redirect::to(&format!("/ui/workflows/{}?version={v}", seg(&w.name))).into_response(),
        Err(e) => refused(&e.to_string()),
    }
}

/// The refusal page of an action a role may not take.
fn acting_refusal(s: &Session) -> Response {
    let body = format!(
        "<h1>Not allowed</h1><p>Your key's role is <strong>{}</strong>; this needs <strong>operator</strong> or <strong>admin</strong>, as in the API.</p>",
        s.key.role.name()
    );
    page(StatusCode::FORBIDDEN, "Not allowed", &body)
}

#[derive(Deserialize)]
struct AuditQ {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    cursor: Option<u64>,
}

/// `GET /ui/audit`: who did what, when, with what outcome, each row with
/// its position and hash; by actor and run, 100 a page (operators and
/// admins, as the API's `/audit`).
async fn audit(S(state): S<Arc<State>>, Operator(s): Operator, Query(q): Query<AuditQ>) -> Response {
    let actor = q.actor.filter(|a| !a.trim().is_empty());
    let run_text = q.run.filter(|r| !r.trim().is_empty());
    let mut b = String::from("<h1>Audit</h1>");
    let run = match run_text.as_deref().map(|r| r.trim().parse::<uuid::Uuid>()) {
        Some(Err(_)) => {
            b.push_str(
                "<p class=\"errors\" role=\"alert\">The run filter is not a run id (a UUID); it was left out.</p>",
            );
            None
        }
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let aq = super::reads::AuditQuery {
        actor: actor.clone(),
        run,
        since: None,
        until: None,
        cursor: q.cursor.map(super::extract::Pos),
        limit: Some(100),
    };
    let page_rows = match super::reads::audit(S(state.clone()), super::extract::Q(aq)).await {
        Ok(p) => p.0,
        Err(e) => return unavailable(&e.0.detail),
    };
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/ui/audit\" class=\"filters\"><label for=\"q-actor\">Actor</label> <input type=\"text\" id=\"q-actor\" name=\"actor\" value=\"{}\"> \
         <label for=\"q-run\">Run</label> <input type=\"text\" id=\"q-run\" name=\"run\" value=\"{}\"> <button type=\"submit\">Filter</button></form>",
        esc(actor.as_deref().unwrap_or("")),
        esc(run_text.as_deref().unwrap_or(""))
    );
    if page_rows.items.is_empty() {
        b.push_str("<p>No records match.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th scope=\"col\">Position</th><th scope=\"col\">When</th><th scope=\"col\">Who</th><th scope=\"col\">What</th>\
             <th scope=\"col\">Outcome</th><th scope=\"col\">About</th><th scope=\"col\">Hash</th></tr></thead><tbody>",
        );
        for r in &page_rows.items {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} <code>{}</code></td><td>{}{}</td><td><code>{}</code></td><td><code title=\"{}\">{}</code></td></tr>",
                r.position,
                esc(&r.recorded_at),
                esc(&r.actor),
                esc(&r.action),
                esc(&r.event_type),
                esc(&r.outcome),
                r.reason.as_deref().map(|x| format!(" ({})", esc(x))).unwrap_or_default(),
                esc(&r.resource),
                esc(&r.hash),
                esc(r.hash.get(..12).unwrap_or(&r.hash))
            );
        }
        b.push_str("</tbody></table>");
    }
    if let Some(next) = page_rows.next_cursor {
        let mut url = format!("/ui/audit?cursor={next}");
        if let Some(a) = &actor {
            let _ = write!(url, "&actor={}", super::pages::enc(a));
        }
        if let Some(r) = &run {
            let _ = write!(url, "&run={r}");
        }
        let _ = write!(b, "<p><a href=\"{}\" rel=\"next\">Later records</a></p>", esc(&url));
    }
    let _ = write!(
        b,
        "<p>Download the tamper-evident export{} (every event with its hash chain; docs/compliance.md): \
         <a href=\"/ui/audit/export?format=jsonl{1}\">JSON Lines</a> · <a href=\"/ui/audit/export?format=csv{1}\">CSV</a></p>",
        if run.is_some() { " of this run" } else { "" },
        run.map(|r| format!("&run={r}")).unwrap_or_default()
    );
    shell(&state, &s, "Audit", &b)
}

#[derive(Deserialize)]
struct CostsQ {
    #[serde(default)]
    by: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    since: Option<String>,
    /// Through this day, included.
    #[serde(default)]
    until: Option<String>,
}

/// `GET /ui/costs?by=workflow|model|day|run&since=DAY&until=DAY`: tokens
/// and money in a range of days, with a bar per group (SVG, no script).
async fn costs(S(state): S<Arc<State>>, s: Session, Query(q): Query<CostsQ>) -> Response {
    use super::reads::GroupBy;
    let (by, name) = match q.by.as_deref() {
        Some("model") => (GroupBy::Model, "model"),
        Some("day") => (GroupBy::Day, "day"),
        Some("run") => (GroupBy::Run, "run"),
        _ => (GroupBy::Workflow, "workflow"),
    };
    let mut bad = Vec::new();
    let mut day = |d: &Option<String>| {
        let d = d.as_deref().map(str::trim).filter(|d| !d.is_empty())?;
        parse_day(d).map_err(|e| bad.push(format!("{e}; that bound was left out"))).ok()
    };
    let (mut since, mut until) = (day(&q.since), day(&q.until));
    if let (Some(a), Some(b)) = (since, until)
        && a > b
    {
        bad.push(format!("From ({a}) was after To ({b}); they were swapped"));
        (since, until) = (Some(b), Some(a));
    }
    let rows = match super::reads::costs(
        S(state.clone()),
        super::extract::Q(super::reads::CostsQuery { by: Some(by), since, until }),
    )
    .await
    {
        Ok(c) => c.0.items,
        Err(e) => return unavailable(&e.0.detail),
    };
    let shown = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default();
    let range = format!("&since={}&until={}", shown(since), shown(until));
    let mut b = String::from("<h1>Costs</h1><p class=\"filters\">By ");
    for x in ["workflow", "model", "day", "run"] {
        if x == name {
            let _ = write!(b, "<strong>{x}</strong> ");
        } else {
            let _ = write!(b, "<a href=\"/ui/costs?by={x}{}\">{x}</a> ", esc(&range));
        }
    }
    let _ = write!(
        b,
        "</p><form method=\"get\" action=\"/ui/costs\" class=\"filters\"><input type=\"hidden\" name=\"by\" value=\"{name}\">\
         <label for=\"c-since\">From</label> <input type=\"date\" id=\"c-since\" name=\"since\" value=\"{}\"> \
         <label for=\"c-until\">To</label> <input type=\"date\" id=\"c-until\" name=\"until\" value=\"{}\"> \
         <button type=\"submit\">Show</button></form>",
        shown(since),
        shown(until)
    );
    for e in &bad {
        let _ = write!(b, "<p class=\"errors\" role=\"alert\">{}.</p>", esc(e));
    }
    if rows.is_empty() {
        b.push_str(if since.is_some() || until.is_some() {
            "<p>No AI attempt was recorded in these days.</p>"
        } else {
            "<p>No AI attempt has been recorded yet.</p>"
        });
        return shell(&state, &s, "Costs", &b);
    }
    let max = rows.iter().map(|r| r.cost_micros).max().unwrap_or(0).max(1);
    let money = |m: i64, c: &Option<String>| format!("{:.4} {}", m as f64 / 1_000_000.0, c.as_deref().unwrap_or(""));
    let height = 24 * rows.len() + 8;
    let _ = write!(
        b,
        "<figure class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 640 {height}\" width=\"640\" height=\"{height}\" role=\"img\" aria-labelledby=\"chart-d\"><desc id=\"chart-d\">Cost by {name}, the table below in bars</desc>"
    );
    for (i, r) in rows.iter().enumerate() {
        let w = 400.0 * r.cost_micros as f64 / max as f64;
        let y = 4 + 24 * i;
        let _ = write!(
            b,
            "<text x=\"0\" y=\"{}\" class=\"label\">{}</text><rect class=\"bar\" x=\"200\" y=\"{y}\" width=\"{w:.1}\" height=\"18\"></rect><text x=\"{:.1}\" y=\"{}\" class=\"label\">{}</text>",
            y + 14,
            esc(r.key.get(..28).unwrap_or(&r.key)),
            206.0 + w,
            y + 14,
            esc(&money(r.cost_micros, &r.currency))
        );
    }
    b.push_str("</svg></figure>");
    let _ = write!(
        b,
        "<table><thead><tr><th scope=\"col\">{name}</th><th scope=\"col\">AI attempts</th><th scope=\"col\">Input tokens</th><th scope=\"col\">Output tokens</th><th scope=\"col\">Cost</th></tr></thead><tbody>"
    );
    for r in &rows {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.key),
            r.attempts,
            r.input_tokens,
            r.output_tokens,
            esc(&money(r.cost_micros, &r.currency))
        );
    }
    b.push_str("</tbody></table>");
    shell(&state, &s, "Costs", &b)
}

/// `GET /ui/runs/{id}/replay`: replays the run's log through today's
/// decider and says whether every recorded decision is still the one made
/// (any role, as `GET /runs/{id}/replay`).
async fn replay(S(state): S<Arc<State>>, s: Session, Path(id): Path<String>) -> Response {
    let back = format!("/ui/runs/{}", seg(&id));
    let Ok(run) = id.parse::<uuid::Uuid>() else { return not_found(&state, &s, &id) };
    let (st, events) = match super::runs::load(&state, run).await {
        Ok(x) => x,
        Err(e) if e.0.status == 404 => return not_found(&state, &s, &id),
        Err(e) => return unavailable(&e.0.detail),
    };
    let report = match state.engine.recorded_definition(&st.workflow, st.workflow_version).await {
        Ok(w) => cairn_runtime::replay::check(&w, &events).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut b = format!("<h1>Replay check of run <code>{run}</code></h1>");
    match report {
        Ok(r) => match &r.divergence {
            None => {
                let _ = write!(
                    b,
                    "<p class=\"notice\" role=\"status\">The log replays exactly: {} events, {} decisions checked, each the one today's engine makes.</p>",
                    r.events, r.decisions_checked
                );
            }
            Some(d) => {
                let pretty = |v: &serde_json::Value| esc(&serde_json::to_string_pretty(v).unwrap_or_default());
                let _ = write!(
                    b,
                    "<div class=\"errors\" role=\"alert\"><p>The log diverges at event {} (position {}): {}</p></div>\
                     <h2>Recorded</h2><pre tabindex=\"0\">{}</pre><h2>Decided now</h2><pre tabindex=\"0\">{}</pre>",
                    d.stream_version,
                    d.global_position,
                    esc(&d.message),
                    pretty(&d.recorded),
                    pretty(&serde_json::Value::Array(d.decided.clone()))
                );
            }
        },
        Err(e) => {
            let _ = write!(b, "<p class=\"errors\" role=\"alert\">The run cannot be replayed: {}</p>", esc(&e));
        }
    }
    let _ = write!(b, "<p><a href=\"{back}\">Back to the run</a></p>");
    shell(&state, &s, "Replay check", &b)
}

/// `POST /ui/runs/{id}/fork`: a new run from a top-level step of this one,
/// the outputs recorded before it carried over (operators, admins); opens
/// the new run's page.
async fn fork(
    S(state): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (s, form, run, back) = match acting_on_run(&state, &headers, &id, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let at = form.field("at");
    if at.is_empty() {
        return refused(&state, &s, "Not forked", "name the step the new run starts from", &back);
    }
    match state.engine.fork(run, &at, serde_json::Map::new(), &s.key.identity).await {
        Ok(new) => {
            state.driver.kick(new);
            Redirect::to(&format!("/ui/runs/{new}")).into_response()
        }
        Err(e) => refused(&state, &s, "Not forked", &e.to_string(), &back),
    }
}

/// `POST /ui/workflows/check` (form: `_csrf`, `source`): what *Check* finds,
/// as JSON, for the editor's diagnostics as you type.
async fn check(S(state): S<Arc<State>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(s) = session(&state, &headers).await else {
        return (StatusCode::UNAUTHORIZED, "sign in at /ui/sign-in").into_response();
    };
    let form = Typed::parse(&body);
    let get = |k: &str| form.one(k).to_owned();
    if !csrf_ok(&state, &s, &form) {
        return (StatusCode::FORBIDDEN, "not this session's form").into_response();
    }
    let out = match super::workflows::compile(&state, &get("source")) {
        Ok(w) => serde_json::json!({"valid": true, "name": w.name, "diagnostics": []}),
        Err(d) => serde_json::json!({
            "valid": false,
            "diagnostics": d.iter().map(|x| serde_json::json!({
                "line": x.line, "column": x.column, "message": x.message, "code": x.code, "help": x.help,
            })).collect::<Vec<_>>(),
        }),
    };
    let mut r = axum::Json(out).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct ExportQ {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    run: Option<String>,
}

/// `GET /ui/audit/export?format=jsonl|csv&run=ID`: the compliance export
/// (docs/compliance.md) as a download, for operators and admins as
/// `GET /exports/audit`; recorded like the API's (the export names who took it).
async fn export(S(state): S<Arc<State>>, Operator(s): Operator, Query(q): Query<ExportQ>) -> Response {
    use super::reads::{ExportFormat, ExportQuery};
    let format = if q.format.as_deref() == Some("csv") { ExportFormat::Csv } else { ExportFormat::Jsonl };
    let run = q.run.as_deref().filter(|r| !r.trim().is_empty()).and_then(|r| r.trim().parse::<uuid::Uuid>().ok());
    let caller = super::extract::Caller {
        identity: s.key.identity.clone(),
        role: s.key.role,
        key_id: Some(s.key.key_id.clone()),
    };
    let query = ExportQuery { format: Some(format), since: None, until: None, run, through: None };
    match super::reads::export(S(state.clone()), caller, super::extract::Q(query)).await {
        Ok(mut r) => {
            let name = if matches!(format, ExportFormat::Csv) { "cairn-audit.csv" } else { "cairn-audit.jsonl" };
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => unavailable(&e.0.detail),
    }
}

/// What matters of an AI attempt, a retry or a decision, in words, beside
/// its timeline entry (the payload holds the rest): the model and the last
/// message sent (the errors fed back, on a retry), the reply with its
/// tokens, cost and time, why an attempt failed or was rejected, when a
/// retry is due, who decided what on which content.
fn gist(event_type: &str, p: &serde_json::Value) -> String {
    let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let num = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_u64).unwrap_or(0);
    let short = |t: &str| {
        let t: String = t.chars().take(400).collect();
        esc(&t)
    };
    let line = match event_type {
        "AiAttemptStarted" => {
            let last = p.get("messages").and_then(|m| m.as_array()).and_then(|m| m.last());
            let said = last.and_then(|m| m.get("content")).and_then(|c| c.as_str()).unwrap_or("");
            format!(
                "attempt {} on <code>{}/{}</code>; sent: <q>{}</q>",
                num(p.get("attempt")),
                esc(&text("provider")),
                esc(&text("model")),
                short(said)
            )
        }
        "AiAttemptCompleted" => {
            let u = p.get("usage");
            let cost = p.get("cost").filter(|c| !c.is_null()).map_or_else(String::new, |c| {
                format!(
                    ", {:.6} {}",
                    num(c.get("micros")) as f64 / 1_000_000.0,
                    esc(c.get("currency").and_then(|x| x.as_str()).unwrap_or(""))
                )
            });
            format!(
                "reply ({} in, {} out tokens{cost}, {} ms): <q>{}</q>",
                num(u.and_then(|u| u.get("input_tokens"))),
                num(u.and_then(|u| u.get("output_tokens"))),
                num(p.get("latency_ms")),
                short(&text("raw_output"))
            )
        }
        "AiAttemptFailed" => format!("failed: <code>{}</code> {}", esc(&text("error_kind")), short(&text("message"))),
        "AiOutputRejected" => {
            let errors: Vec<String> = p
                .get("errors")
                .and_then(|e| e.as_array())
                .map(|e| {
                    e.iter()
                        .map(|x| {
                            format!(
                                "{} {}",
                                x.get("path").and_then(|v| v.as_str()).unwrap_or(""),
                                x.get("message").and_then(|v| v.as_str()).unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("rejected, fed back: {}", short(&errors.join("; ")))
        }
        "RetryScheduled" => format!(
            "attempt {} due {} (after {} ms)",
            num(p.get("next_attempt")),
            esc(&text("due_at")),
            num(p.get("backoff_ms"))
        ),
        "ApprovalDecided" => format!(
            "<strong>{}</strong> {} content <code>{}</code>{}",
            esc(&text("decided_by")),
            esc(&text("decision")),
            esc(text("content_hash").get(..12).unwrap_or("")),
            p.get("comment").and_then(|c| c.as_str()).map(|c| format!(": “{}”", short(c))).unwrap_or_default()
        ),
        "ErrorCaught" => format!(
            "<code>{}</code> caught after attempt {}; on to <code>{}</code>: {}",
            esc(&text("error_kind")),
            num(p.get("attempt")),
            esc(&text("next")),
            short(&text("message"))
        ),
        "StepSkipped" => short(&text("reason")),
        "StepFailed" | "RunFailed" => {
            let kind = text("error_kind");
            let kind = if kind.is_empty() { text("kind") } else { kind };
            format!("<code>{}</code> {}", esc(&kind), short(&text("message")))
        }
        _ => return String::new(),
    };
    format!("<br><span class=\"gist\">{line}</span>")
}
