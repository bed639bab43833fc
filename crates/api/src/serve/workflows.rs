//! Workflows: create, list, get (with versions), publish a new version,
//! archive, validate. A definition is YAML (`application/yaml`) or JSON
//! (`application/json`); one with errors is refused with every diagnostic,
//! line and column.

use std::sync::Arc;

use axum::extract::{Path, Request, State as S};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cairn_events::{Event, ExpectedVersion, Metadata, NewEvent, WorkflowArchived};
use cairn_runtime::lang::Diagnostic;
use schemars::JsonSchema;
use serde::Serialize;

use super::State;
use super::extract::{Caller, body_bytes, media_type};
use super::problem::{ApiError, ApiResult, FieldProblem};

/// A workflow and its versions.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowView {
    /// Its name.
    pub name: String,
    /// The newest version (new runs use it unless they name another).
    pub latest_version: u32,
    /// Archived: no new runs; history kept.
    pub archived: bool,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// One published version.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionView {
    /// Version number, from 1.
    pub version: u32,
    /// SHA-256 of the source.
    pub definition_hash: String,
    /// Who published it.
    pub published_by: String,
    /// When (RFC 3339).
    pub published_at: String,
    /// Its position in the log.
    pub position: u64,
}

/// A version with its source.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionSource {
    /// The workflow.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// SHA-256 of the source.
    pub definition_hash: String,
    /// Who published it.
    pub published_by: String,
    /// When (RFC 3339).
    pub published_at: String,
    /// The definition exactly as published.
    pub source: String,
}

/// A page of workflows.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowList {
    /// Workflows by name.
    pub items: Vec<WorkflowSummary>,
}

/// A workflow in a list.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowSummary {
    /// Its name.
    pub name: String,
    /// The newest version.
    pub latest_version: u32,
    /// Whether it is archived.
    pub archived: bool,
    /// When its newest version was published.
    pub updated_at: String,
}

/// What validation found.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Validation {
    /// No problems.
    pub valid: bool,
    /// The workflow's name, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every problem, with line and column.
    pub diagnostics: Vec<FieldProblem>,
}

/// A workflow's recorded state.
pub struct Recorded {
    /// The view.
    pub view: WorkflowView,
    /// Stream version.
    pub stream_version: u64,
    /// Sources by version.
    pub sources: Vec<String>,
}

/// Reads a workflow's stream; `None` when it was never published.
pub async fn recorded(state: &State, name: &str) -> ApiResult<Option<Recorded>> {
    let events = state.store.read_stream(&cairn_events::workflow_stream(name), 1).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut view = WorkflowView { name: name.to_owned(), latest_version: 0, archived: false, versions: Vec::new() };
    let mut sources = Vec::new();
    for r in &events {
        match Event::decode(r)? {
            Event::WorkflowVersionPublished(p) => {
                view.latest_version = p.version;
                view.versions.push(VersionView {
                    version: p.version,
                    definition_hash: p.definition_hash,
                    published_by: p.published_by,
                    published_at: r.recorded_at.clone(),
                    position: r.global_position,
                });
                sources.push(p.source);
            }
            Event::WorkflowArchived(_) => view.archived = true,
            _ => {}
        }
    }
    Ok(Some(Recorded { view, stream_version: events.len() as u64, sources }))
}

fn problems(d: &[Diagnostic]) -> Vec<FieldProblem> {
    d.iter()
        .map(|d| FieldProblem {
            field: format!("{}:{}", d.line, d.column),
            message: d.message.clone(),
            code: Some(d.code.to_owned()),
            line: Some(d.line),
            column: Some(d.column),
            help: d.help.clone(),
        })
        .collect()
}

/// Reads a definition from the body: YAML or JSON text.
async fn definition_text(req: Request) -> ApiResult<String> {
    let media = media_type(&req);
    match media.as_deref() {
        None
        | Some(
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "application/json" | "text/plain",
        ) => {}
        Some(m) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!("the body is `{m}`; send the definition as `application/yaml` or `application/json`"),
            ));
        }
    }
    let bytes = body_bytes(req, &()).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("not-utf8", "the definition is not UTF-8 text"))?;
    if media.as_deref() == Some("application/json") {
        // Well-formed JSON first (400), then the language's checks (422).
        super::extract::parse_json::<serde_json::Value>(text.as_bytes())?;
    }
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("empty-body", "send a workflow definition (YAML or JSON)"));
    }
    Ok(text)
}

/// Compiles a definition against this server's tasks, secrets and models.
pub(super) fn compile(state: &State, text: &str) -> Result<cairn_runtime::Workflow, Vec<Diagnostic>> {
    let e = &state.engine;
    let w = cairn_runtime::lang::parse(text, "body", &e.task_names()).map_err(|d| d.0)?;
    let mut d = cairn_runtime::lang::check_secrets(&w, &e.secret_names(), "body");
    d.extend(cairn_runtime::lang::check_models(&w, e.config(), "body"));
    if d.is_empty() { Ok(w) } else { Err(d) }
}

/// Compiles a definition that must be of workflow `name`.
fn compile_as(state: &State, text: &str, name: &str) -> ApiResult<cairn_runtime::Workflow> {
    let w = compile(state, text).map_err(|d| refused(&d))?;
    if w.name != name {
        return Err(ApiError::unprocessable(
            "name-mismatch",
            format!("the definition is named `{}`, not `{name}`", w.name),
            vec![FieldProblem::new("name", format!("must be `{name}`"))],
        ));
    }
    Ok(w)
}

fn refused(d: &[Diagnostic]) -> ApiError {
    ApiError::unprocessable(
        "invalid-definition",
        format!("the definition has {} problem(s); it was not published", d.len()),
        problems(d),
    )
}

/// `POST /workflows/validate`: 200 when valid; a definition with errors
/// gets the same 422 as creating it would, with every diagnostic.
pub async fn validate(S(state): S<Arc<State>>, req: Request) -> ApiResult<axum::Json<Validation>> {
    let text = definition_text(req).await?;
    match compile(&state, &text) {
        Ok(w) => Ok(axum::Json(Validation { valid: true, name: Some(w.name), diagnostics: Vec::new() })),
        Err(d) => Err(refused(&d)),
    }
}

/// `POST /workflows`: a new workflow, version 1.
pub async fn create(S(state): S<Arc<State>>, caller: Caller, req: Request) -> ApiResult<impl IntoResponse> {
    let text = definition_text(req).await?;
    let w = compile(&state, &text).map_err(|d| refused(&d))?;
    if recorded(&state, &w.name).await?.is_some() {
        return Err(ApiError::conflict(
            "workflow-exists",
            format!(
                "a workflow named `{}` exists; publish a new version with POST /workflows/{}/versions",
                w.name, w.name
            ),
        ));
    }
    publish(&state, &caller, w, true).await
}

/// `POST /workflows/{name}/versions`: a new version of a workflow.
pub async fn new_version(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    let text = definition_text(req).await?;
    let Some(rec) = recorded(&state, &name).await? else {
        return Err(ApiError::not_found(
            "unknown-workflow",
            format!("no workflow named `{name}`; create it with POST /workflows"),
        ));
    };
    if rec.view.archived {
        return Err(ApiError::conflict(
            "workflow-archived",
            format!("workflow `{name}` is archived; it takes no new versions"),
        ));
    }
    let w = compile_as(&state, &text, &name)?;
    publish(&state, &caller, w, false).await
}

async fn publish(
    state: &State,
    caller: &Caller,
    w: cairn_runtime::Workflow,
    create: bool,
) -> ApiResult<impl IntoResponse + use<>> {
    state.engine.check_children(&w).await.map_err(|e| {
        ApiError::unprocessable(
            "unknown-child-workflow",
            e.to_string(),
            vec![FieldProblem::new("steps", e.to_string())],
        )
    })?;
    let before = state.engine.latest_version(&w.name).await?;
    let version = match state.engine.publish(&w, &caller.identity).await {
        Ok(v) => v,
        Err(cairn_runtime::RunError::Store(e)) if e.is_conflict() => {
            return Err(ApiError::conflict(
                if create { "workflow-exists" } else { "concurrent-publish" },
                format!("another version of `{}` was published at the same moment; read it and try again", w.name),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(rec) = recorded(state, &w.name).await? else {
        return Err(ApiError::internal("published workflow not found"));
    };
    let status = if before == Some(version) { StatusCode::OK } else { StatusCode::CREATED };
    let location = format!("/workflows/{}/versions/{version}", w.name);
    Ok((status, [(axum::http::header::LOCATION, location)], axum::Json(rec.view)))
}

/// `GET /workflows`.
pub async fn list(S(state): S<Arc<State>>) -> ApiResult<axum::Json<WorkflowList>> {
    let db = state.read().await?;
    let mut items = Vec::new();
    for stream in cairn_projections::queries::workflow_streams(db).await? {
        let Some(name) = stream.strip_prefix("workflow-") else { continue };
        if let Some(r) = recorded(&state, name).await? {
            items.push(WorkflowSummary {
                name: r.view.name,
                latest_version: r.view.latest_version,
                archived: r.view.archived,
                updated_at: r.view.versions.last().map(|v| v.published_at.clone()).unwrap_or_default(),
            });
        }
    }
    Ok(axum::Json(WorkflowList { items }))
}

/// `GET /workflows/{name}`.
pub async fn get(S(state): S<Arc<State>>, Path(name): Path<String>) -> ApiResult<axum::Json<WorkflowView>> {
    match recorded(&state, &name).await? {
        Some(r) => Ok(axum::Json(r.view)),
        None => Err(ApiError::not_found("unknown-workflow", format!("no workflow named `{name}`"))),
    }
}

/// `GET /workflows/{name}/versions/{version}`.
pub async fn version(
    S(state): S<Arc<State>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<VersionSource>> {
    let missing = || ApiError::not_found("unknown-version", format!("workflow `{name}` has no version {version}"));
    let v: u32 = version.parse().map_err(|_| missing())?;
    let r = recorded(&state, &name).await?.ok_or_else(missing)?;
    let i = r.view.versions.iter().position(|x| x.version == v).ok_or_else(missing)?;
    let x = &r.view.versions[i];
    Ok(axum::Json(VersionSource {
        name: name.clone(),
        version: v,
        definition_hash: x.definition_hash.clone(),
        published_by: x.published_by.clone(),
        published_at: x.published_at.clone(),
        source: r.sources[i].clone(),
    }))
}

/// `POST /workflows/{name}/archive`.
pub async fn archive(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<WorkflowView>> {
    let Some(r) = recorded(&state, &name).await? else {
        return Err(ApiError::not_found("unknown-workflow", format!("no workflow named `{name}`")));
    };
    if !r.view.archived {
        let e = Event::WorkflowArchived(WorkflowArchived { name: name.clone(), by: caller.identity.clone() });
        match state
            .store
            .append(
                &cairn_events::workflow_stream(&name),
                ExpectedVersion::Exact(r.stream_version),
                vec![NewEvent::from_event(&e, Metadata::by(&caller.identity))],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {
                return Err(ApiError::conflict(
                    "concurrent-change",
                    format!("`{name}` changed meanwhile; read it and try again"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let r = recorded(&state, &name).await?.ok_or_else(|| ApiError::internal("archived workflow not found"))?;
    Ok(axum::Json(r.view))
}

/// One past run, judged under a new definition.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ShadowRun {
    /// The run.
    pub run_id: uuid::Uuid,
    /// Its status.
    pub status: String,
    /// Recorded outputs the new contracts reject, branches the new
    /// conditions send elsewhere, steps the new definition lacks.
    pub findings: Vec<cairn_runtime::replay::Finding>,
    /// The first decision the new definition makes otherwise (a replay
    /// under it); null when it would decide as recorded throughout.
    pub divergence: Option<cairn_runtime::replay::Divergence>,
}

/// Shadow re-validation of a workflow's past runs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Shadow {
    /// The workflow.
    pub workflow: String,
    /// Runs re-checked.
    pub checked: usize,
    /// Runs that would now fail or take another path.
    pub affected: usize,
    /// Every run re-checked, oldest first.
    pub runs: Vec<ShadowRun>,
}

/// `POST /workflows/{name}/shadow`: re-checks every past run of the
/// workflow against a new definition, calling nothing.
pub async fn shadow(S(state): S<Arc<State>>, Path(name): Path<String>, req: Request) -> ApiResult<axum::Json<Shadow>> {
    let text = definition_text(req).await?;
    if recorded(&state, &name).await?.is_none() {
        return Err(ApiError::not_found("unknown-workflow", format!("no workflow named `{name}`")));
    }
    let w = state.engine.configured(compile_as(&state, &text, &name)?);
    let mut runs = Vec::new();
    for r in state.engine.runs_of(&name, None).await? {
        let recorded = state.store.read_stream(&cairn_events::run_stream(r.run_id), 1).await?;
        let findings = cairn_runtime::replay::shadow(&w, &recorded)?;
        let divergence = cairn_runtime::replay::check(&w, &recorded)?.divergence;
        runs.push(ShadowRun { run_id: r.run_id, status: r.status, findings, divergence });
    }
    let affected = runs.iter().filter(|r| !r.findings.is_empty() || r.divergence.is_some()).count();
    Ok(axum::Json(Shadow { workflow: name, checked: runs.len(), affected, runs }))
}
