//! `cairn mcp`: Cairn as a Model Context Protocol server (the official
//! Rust SDK, `rmcp`), over stdio on a local database or over streamable
//! HTTP at `/mcp` of `cairn serve`. Every tool call, resource read and
//! prompt is a request to the HTTP API's own router, with the caller's key
//! over HTTP: the roles, identity, validation, problems and audit are the
//! API's, never a second copy of them. Resuming a run takes an explicit
//! `confirm: true`; without it nothing is recorded. See docs/mcp.md.

use std::sync::Arc;

use axum::http::Method;

use crate::local::Body;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument, PromptMessage,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    Role, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{Map, Value, json};

/// The docs served as resources (`cairn://docs/NAME`).
const DOCS: &[(&str, &str, &str)] = &[
    ("workflow-language", "The workflow language", include_str!("../../../docs/workflow-language.md")),
    ("recovery", "Resume, replay and fork", include_str!("../../../docs/recovery.md")),
    ("api", "The HTTP API", include_str!("../../../docs/api.md")),
    ("errors", "Error codes", include_str!("../../../docs/errors.md")),
    ("mcp", "This MCP server", include_str!("../../../docs/mcp.md")),
];

/// The MCP server: the API's router, and how a call is authorized.
#[derive(Clone)]
pub struct Mcp {
    app: axum::Router,
}

impl Mcp {
    /// A server whose calls go to `app` (with the key of each HTTP request,
    /// or as the process's identity on stdio).
    pub fn new(app: axum::Router) -> Mcp {
        Mcp { app }
    }

    /// One request to the API (with the caller's key over HTTP).
    async fn api(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        body: Option<Body>,
        headers: &[(&str, String)],
    ) -> Result<(u16, Value), ErrorData> {
        let auth = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get(axum::http::header::AUTHORIZATION).cloned());
        crate::local::request(&self.app, method, path, body, headers, auth)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    /// A tool's answer from an API answer: the JSON as structured content,
    /// or the problem (what was wrong and how to fix it) as a tool error.
    fn answer(status: u16, v: Value) -> CallToolResult {
        if status < 300 {
            let v = if v.is_object() { v } else { json!({ "result": v }) };
            CallToolResult::structured(v)
        } else {
            problem(status, &v)
        }
    }

    async fn call(
        &self,
        name: &str,
        a: &Map<String, Value>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let s = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_owned);
        let need = |k: &str| s(k).ok_or_else(|| ErrorData::invalid_params(format!("`{k}` is required"), None));
        let run = |k: &str| -> Result<String, ErrorData> {
            let id = need(k)?;
            if uuid::Uuid::parse_str(&id).is_err() {
                return Err(ErrorData::invalid_params(format!("`{k}` `{id}` is not a run id (a UUID)"), None));
            }
            Ok(id)
        };
        let pick = |keys: &[&str]| -> Value {
            Value::Object(keys.iter().filter_map(|k| a.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect())
        };
        Ok(match name {
            "list_runs" => {
                let query = {
                    let mut q = form_urlencoded::Serializer::new(String::new());
                    for k in ["status", "workflow", "since"] {
                        if let Some(v) = s(k) {
                            q.append_pair(k, &v);
                        }
                    }
                    if let Some(l) = a.get("limit").and_then(Value::as_u64) {
                        q.append_pair("limit", &l.to_string());
                    }
                    q.finish()
                };
                let (st, v) = self.api(ctx, Method::GET, &format!("/runs?{query}"), None, &[]).await?;
                Self::answer(st, v)
            }
            "get_run" => {
                let id = run("run_id")?;
                let (st, v) = self.api(ctx, Method::GET, &format!("/runs/{id}"), None, &[]).await?;
                if st >= 300 {
                    return Ok(problem(st, &v));
                }
                let (hs, h) = self.api(ctx, Method::GET, &format!("/runs/{id}/history"), None, &[]).await?;
                if hs >= 300 {
                    return Ok(problem(hs, &h));
                }
                CallToolResult::structured(json!({ "run": v, "history": h["items"] }))
            }
            "run_context" => {
                let id = run("run_id")?;
                let (st, v) = self.api(ctx, Method::GET, &format!("/runs/{id}/context"), None, &[]).await?;
                Self::answer(st, v)
            }
            "validate_workflow" => {
                let (st, v) =
                    self.api(ctx, Method::POST, "/workflows/validate", Some(Body::Yaml(need("yaml")?)), &[]).await?;
                Self::answer(st, v)
            }
            "publish_workflow" => {
                let yaml = need("yaml")?;
                let (st, v) = self.api(ctx, Method::POST, "/workflows", Some(Body::Yaml(yaml.clone())), &[]).await?;
                if st == 409 && v["code"] == "workflow-exists" {
                    // A new version of a workflow that exists.
                    let name = cairn_runtime::lang::parse_published(&yaml, "workflow.yaml")
                        .map(|w| w.name)
                        .unwrap_or_default();
                    let (st, v) = self
                        .api(ctx, Method::POST, &format!("/workflows/{name}/versions"), Some(Body::Yaml(yaml)), &[])
                        .await?;
                    Self::answer(st, v)
                } else {
                    Self::answer(st, v)
                }
            }
            "start_run" => {
                let body = pick(&["workflow", "version", "inputs"]);
                let mut headers = Vec::new();
                if let Some(k) = s("idempotency_key") {
                    headers.push(("idempotency-key", k));
                }
                if let Some(w) = a.get("wait_seconds").and_then(Value::as_u64) {
                    headers.push(("prefer", format!("wait={}", w.min(60))));
                }
                let (st, v) = self.api(ctx, Method::POST, "/runs", Some(Body::Json(body)), &headers).await?;
                Self::answer(st, v)
            }
            "plan_resume" => {
                let id = run("run_id")?;
                let mut body = pick(&["from", "policy", "inputs", "force"]);
                body["dry_run"] = json!(true);
                let (st, v) =
                    self.api(ctx, Method::POST, &format!("/runs/{id}/resume"), Some(Body::Json(body)), &[]).await?;
                plan_answer(st, v, false)?
            }
            "resume_run" => {
                let id = run("run_id")?;
                if a.get("confirm") != Some(&Value::Bool(true)) {
                    return Ok(CallToolResult::error(vec![ContentBlock::text(
                        "not resumed, nothing was recorded: resuming needs `confirm: true`. Call plan_resume first, \
                         show the plan to the person you act for, and call resume_run again with `confirm: true` \
                         once they agree.",
                    )]));
                }
                let body = pick(&["from", "policy", "inputs", "force", "reason"]);
                let (st, v) =
                    self.api(ctx, Method::POST, &format!("/runs/{id}/resume"), Some(Body::Json(body)), &[]).await?;
                plan_answer(st, v, true)?
            }
            "replay_run" => {
                let id = run("run_id")?;
                let (st, v) = self.api(ctx, Method::GET, &format!("/runs/{id}/replay"), None, &[]).await?;
                Self::answer(st, v)
            }
            "fork_run" => {
                let id = run("run_id")?;
                let body = pick(&["from", "inputs"]);
                let (st, v) =
                    self.api(ctx, Method::POST, &format!("/runs/{id}/fork"), Some(Body::Json(body)), &[]).await?;
                Self::answer(st, v)
            }
            "cancel_run" => {
                let id = run("run_id")?;
                let body = pick(&["reason"]);
                let (st, v) =
                    self.api(ctx, Method::POST, &format!("/runs/{id}/cancel"), Some(Body::Json(body)), &[]).await?;
                Self::answer(st, v)
            }
            "inbox" => {
                let (st, v) = self.api(ctx, Method::GET, "/inbox", None, &[]).await?;
                Self::answer(st, v)
            }
            "submit_form" => {
                let (id, step) = (run("run_id")?, need("step_id")?);
                let body = pick(&["values"]);
                let path = format!("/runs/{id}/steps/{}/submission", encode(&step));
                let (st, v) = self.api(ctx, Method::POST, &path, Some(Body::Json(body)), &[]).await?;
                Self::answer(st, v)
            }
            "decide_approval" => {
                let (id, step) = (run("run_id")?, need("step_id")?);
                if !matches!(a.get("approve"), Some(Value::Bool(_))) {
                    return Err(ErrorData::invalid_params("`approve` (true or false) is required", None));
                }
                let body = pick(&["approve", "comment", "values"]);
                let path = format!("/runs/{id}/steps/{}/decision", encode(&step));
                let (st, v) = self.api(ctx, Method::POST, &path, Some(Body::Json(body)), &[]).await?;
                Self::answer(st, v)
            }
            "export_run" => {
                let id = run("run_id")?;
                let (st, v) = self.api(ctx, Method::GET, &format!("/exports/audit?run={id}"), None, &[]).await?;
                if st >= 300 {
                    return Ok(problem(st, &v));
                }
                // NDJSON: the events and the manifest, as the text it is.
                let text = match v {
                    Value::String(t) => t,
                    other => other.to_string(),
                };
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
            other => return Err(ErrorData::invalid_params(format!("no tool `{other}`; tools/list has them"), None)),
        })
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A problem+json answer as a tool error the assistant can act on.
fn problem(status: u16, v: &Value) -> CallToolResult {
    let code = v["code"].as_str().unwrap_or("error");
    let detail = v["detail"].as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut text = format!("{status} {code}: {detail}");
    if let Some(errors) = v["errors"].as_array() {
        for e in errors {
            text.push_str(&format!("\n- {}", e["message"].as_str().map_or_else(|| e.to_string(), str::to_owned)));
        }
    }
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({ "status": status, "problem": v }));
    r
}

/// A resume plan's answer: the plan as data and as the text diff the CLI
/// prints.
fn plan_answer(status: u16, v: Value, recorded: bool) -> Result<CallToolResult, ErrorData> {
    if status >= 300 {
        return Ok(problem(status, &v));
    }
    let text = match serde_json::from_value::<cairn_runtime::recovery::Plan>(v["plan"].clone()) {
        Ok(p) => crate::commands::recovery::plan_text(&p, false),
        Err(_) => v["plan"].to_string(),
    };
    let head = if recorded {
        "resumed: `RunResumed` is recorded and the run goes on; get_run shows how it ends."
    } else {
        "a plan only: nothing was recorded. To go ahead, call resume_run with the same arguments and `confirm: true`."
    };
    let mut r = CallToolResult::success(vec![ContentBlock::text(format!("{head}\n{text}"))]);
    r.structured_content = Some(v);
    Ok(r)
}

/// A tool: its name, what it does, its arguments' schema, whether it only
/// reads, and whether it may undo or repeat work.
fn tool(name: &'static str, description: &'static str, schema: Value, read_only: bool, destructive: bool) -> Tool {
    let schema = match schema {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut annotations = ToolAnnotations::new();
    annotations.read_only_hint = Some(read_only);
    annotations.destructive_hint = Some(destructive);
    Tool::new(name, description, Arc::new(schema)).with_annotations(annotations)
}

fn run_id() -> Value {
    json!({ "type": "string", "format": "uuid", "description": "The run's id." })
}

/// The tools, in the order a person would reach for them (made once).
pub fn tools() -> &'static [Tool] {
    static TOOLS: std::sync::OnceLock<Vec<Tool>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(make_tools)
}

fn make_tools() -> Vec<Tool> {
    let object = |props: Value, required: &[&str]| json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false });
    let inputs = json!({ "type": "object", "description": "Inputs, checked against the workflow's `inputs` schema." });
    let resume_props = json!({
        "run_id": run_id(),
        "from": { "type": "string", "description": "The step to resume from (default: the step that failed)." },
        "policy": { "type": "string", "enum": ["failed-only", "downstream"], "description": "What runs again: `failed-only` (default: what the changed steps feed) or `downstream` (everything after `from`)." },
        "inputs": inputs,
        "force": { "type": "boolean", "description": "Resume a cancelled run, or send non-idempotent HTTP requests again." }
    });
    let mut confirm_props = resume_props.clone();
    confirm_props["reason"] = json!({ "type": "string", "description": "Why (recorded in `RunResumed`)." });
    confirm_props["confirm"] = json!({ "type": "boolean", "description": "Must be true: the person you act for has seen the plan (plan_resume) and agrees. Without it nothing is recorded." });
    vec![
        tool(
            "list_runs",
            "List runs, newest first, with their status and the step they are on.",
            object(
                json!({
                    "status": { "type": "string", "enum": ["running", "waiting", "completed", "failed", "cancelled", "compensated"] },
                    "workflow": { "type": "string" },
                    "since": { "type": "string", "description": "RFC 3339 time or a day (YYYY-MM-DD)." },
                    "limit": { "type": "integer", "minimum": 1, "maximum": 500 }
                }),
                &[],
            ),
            true,
            false,
        ),
        tool(
            "get_run",
            "A run: status, inputs, output or error, what it waits for, and its history step by step.",
            object(json!({ "run_id": run_id() }), &["run_id"]),
            true,
            false,
        ),
        tool(
            "run_context",
            "A run's inputs and every step's output so far (what templates see).",
            object(json!({ "run_id": run_id() }), &["run_id"]),
            true,
            false,
        ),
        tool(
            "validate_workflow",
            "Check a workflow definition (YAML) without publishing it: every problem with its line, column and a fix.",
            object(json!({ "yaml": { "type": "string" } }), &["yaml"]),
            true,
            false,
        ),
        tool(
            "publish_workflow",
            "Publish a workflow definition (YAML): version 1 of a new name, or the next version of one that exists.",
            object(json!({ "yaml": { "type": "string" } }), &["yaml"]),
            false,
            false,
        ),
        tool(
            "start_run",
            "Start a run of a published workflow; with `wait_seconds` the answer has its end when it ends within them.",
            object(
                json!({
                    "workflow": { "type": "string" },
                    "version": { "type": "integer", "minimum": 1 },
                    "inputs": inputs,
                    "idempotency_key": { "type": "string", "description": "The same key starts one run, however often it is sent." },
                    "wait_seconds": { "type": "integer", "minimum": 0, "maximum": 60 }
                }),
                &["workflow"],
            ),
            false,
            false,
        ),
        tool(
            "plan_resume",
            "Plan resuming a failed run from a step: which steps are kept, run again, newly reached or no longer reached, approvals asked again, AI cost. Records nothing.",
            object(resume_props, &["run_id"]),
            true,
            false,
        ),
        tool(
            "resume_run",
            "Resume a failed run as planned by plan_resume. Needs `confirm: true`; without it nothing is recorded.",
            object(confirm_props, &["run_id", "confirm"]),
            false,
            true,
        ),
        tool(
            "replay_run",
            "Replay a run: decide again at every recorded event and report the first divergence from the current code.",
            object(json!({ "run_id": run_id() }), &["run_id"]),
            true,
            false,
        ),
        tool(
            "fork_run",
            "Start a new run from a step of this one, carrying over the outputs before it (this run is never changed).",
            object(json!({ "run_id": run_id(), "from": { "type": "string" }, "inputs": inputs }), &["run_id", "from"]),
            false,
            false,
        ),
        tool(
            "cancel_run",
            "Cancel a run (and its child runs).",
            object(json!({ "run_id": run_id(), "reason": { "type": "string" } }), &["run_id"]),
            false,
            true,
        ),
        tool(
            "inbox",
            "The forms and approvals waiting for people (for the caller's identity, or all for an admin).",
            object(json!({}), &[]),
            true,
            false,
        ),
        tool(
            "submit_form",
            "Submit a form a run waits for; the values are checked against its fields.",
            object(
                json!({ "run_id": run_id(), "step_id": { "type": "string" }, "values": { "type": "object" } }),
                &["run_id", "step_id", "values"],
            ),
            false,
            false,
        ),
        tool(
            "decide_approval",
            "Approve or reject an approval a run waits for, as the caller's identity.",
            object(
                json!({ "run_id": run_id(), "step_id": { "type": "string" }, "approve": { "type": "boolean" }, "comment": { "type": "string" }, "values": { "type": "object", "description": "The approval's fields, if it has any." } }),
                &["run_id", "step_id", "approve"],
            ),
            false,
            false,
        ),
        tool(
            "export_run",
            "A run's events as a tamper-evident export (NDJSON with a manifest).",
            object(json!({ "run_id": run_id() }), &["run_id"]),
            true,
            false,
        ),
    ]
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> InitializeResult {
        let caps = ServerCapabilities::builder().enable_tools().enable_resources().enable_prompts().build();
        InitializeResult::new(caps)
            .with_server_info(Implementation::new("cairn", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Cairn runs durable workflows. Inspect runs (list_runs, get_run, run_context), validate and publish \
                 workflows, start runs, answer forms and approvals (inbox, submit_form, decide_approval). To recover a \
                 failed run: plan_resume, show the plan, then resume_run with confirm: true. Resources: workflow \
                 definitions and each step's output contract (cairn://workflows/NAME/versions/N/contracts), the docs.",
            )
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools().to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !tools().iter().any(|t| t.name == request.name) {
            return Err(ErrorData::invalid_params(format!("no tool `{}`; tools/list has them", request.name), None));
        }
        let args = request.arguments.clone().unwrap_or_default();
        match self.call(&request.name, &args, &ctx).await {
            Ok(r) => Ok(r.into()),
            // A wrong or missing argument: the assistant reads why and tries again.
            Err(e) if e.code == rmcp::model::ErrorCode::INVALID_PARAMS => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!("invalid arguments: {}", e.message))]).into())
            }
            Err(e) => Err(e),
        }
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut out = vec![
            Resource::new("cairn://workflows", "workflows")
                .with_description("The published workflows, with their latest versions.")
                .with_mime_type("application/json"),
        ];
        for (name, title, _) in DOCS {
            out.push(
                Resource::new(format!("cairn://docs/{name}"), *name).with_title(*title).with_mime_type("text/markdown"),
            );
        }
        // Each workflow's latest definition and contracts, when the caller may read them.
        let (st, v) = self.api(&ctx, Method::GET, "/workflows", None, &[]).await?;
        if st < 300 {
            for w in v["items"].as_array().cloned().unwrap_or_default() {
                let (Some(name), Some(version)) = (w["name"].as_str(), w["latest_version"].as_u64()) else { continue };
                out.push(
                    Resource::new(format!("cairn://workflows/{name}/versions/{version}"), format!("{name} v{version}"))
                        .with_mime_type("application/yaml"),
                );
                out.push(
                    Resource::new(
                        format!("cairn://workflows/{name}/versions/{version}/contracts"),
                        format!("{name} v{version} contracts"),
                    )
                    .with_description("Each step's output contract, what it reads and the fields available to it.")
                    .with_mime_type("application/json"),
                );
            }
        }
        Ok(ListResourcesResult::with_all_items(out))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("cairn://workflows/{name}", "workflow").with_mime_type("application/json"),
            ResourceTemplate::new("cairn://workflows/{name}/versions/{version}", "workflow version")
                .with_mime_type("application/yaml"),
            ResourceTemplate::new("cairn://workflows/{name}/versions/{version}/contracts", "step contracts")
                .with_description("Each step's output contract, what it reads and the fields available to it.")
                .with_mime_type("application/json"),
            ResourceTemplate::new("cairn://docs/{name}", "docs").with_mime_type("text/markdown"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.clone();
        let not_found = || ErrorData::resource_not_found(format!("no resource {uri}; resources/list has them"), None);
        let path = uri.strip_prefix("cairn://").ok_or_else(not_found)?;
        let parts: Vec<&str> = path.split('/').collect();
        let fetch = |p: String| async move {
            let (st, v) = self.api(&ctx, Method::GET, &p, None, &[]).await?;
            if st >= 300 {
                let detail = v["detail"].as_str().unwrap_or("refused").to_owned();
                return Err(if st == 404 {
                    ErrorData::resource_not_found(detail, None)
                } else {
                    ErrorData::invalid_request(format!("{st}: {detail}"), None)
                });
            }
            Ok(v)
        };
        let text = match parts.as_slice() {
            ["docs", name] => {
                DOCS.iter().find(|(n, ..)| n == name).map(|(_, _, t)| (*t).to_owned()).ok_or_else(not_found)?
            }
            ["workflows"] => fetch("/workflows".into()).await?.to_string(),
            ["workflows", name] => fetch(format!("/workflows/{}", encode(name))).await?.to_string(),
            ["workflows", name, "versions", v] => fetch(format!("/workflows/{}/versions/{}", encode(name), encode(v)))
                .await?["source"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ["workflows", name, "versions", v, "contracts"] => {
                let source = fetch(format!("/workflows/{}/versions/{}", encode(name), encode(v))).await?;
                let w = cairn_runtime::lang::parse_published(source["source"].as_str().unwrap_or_default(), name)
                    .map_err(|e| ErrorData::internal_error(format!("the definition does not compile: {e:?}"), None))?;
                serde_json::to_string_pretty(&crate::commands::author::explain(&w)).unwrap_or_default()
            }
            _ => return Err(not_found()),
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into())
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let arg = |n: &str, d: &str| {
            let mut a = PromptArgument::new(n);
            a.description = Some(d.to_owned());
            a.required = Some(true);
            a
        };
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "diagnose_failed_run",
                Some("Find why a run failed and propose a resume plan."),
                Some(vec![arg("run_id", "The failed run's id.")]),
            ),
            Prompt::new(
                "draft_workflow",
                Some("Draft a Cairn workflow from a description, validate it, then publish it."),
                Some(vec![arg("description", "What the workflow should do.")]),
            ),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ErrorData::invalid_params(format!("`{k}` is required"), None))
        };
        let text = match request.name.as_str() {
            "diagnose_failed_run" => {
                let id = arg("run_id")?;
                let (st, run) = self.api(&ctx, Method::GET, &format!("/runs/{}", encode(&id)), None, &[]).await?;
                let now = if st < 300 {
                    format!("Its record now:\n```json\n{run:#}\n```\n")
                } else {
                    format!("(It could not be read: {st} {}.)\n", run["detail"])
                };
                format!(
                    "Run {id} needs a diagnosis.\n{now}\nCall get_run to read its history and the failed step's error, and \
                     run_context for what each step produced. Say in plain words which step failed, why, and whether it \
                     is worth retrying as is, with changed inputs, or from an earlier step. Then call plan_resume with what \
                     you propose and show the plan. Do not call resume_run until the person agrees; then pass confirm: true."
                )
            }
            "draft_workflow" => {
                let d = arg("description")?;
                format!(
                    "Draft a Cairn workflow (YAML) that does this: {d}\n\nThe language is in the resource \
                     cairn://docs/workflow-language. Give AI steps an output_contract so later steps can read their \
                     fields; the contracts resource of a published version shows what each step may read. Call \
                     validate_workflow and fix every problem it reports before you call publish_workflow."
                )
            }
            other => {
                return Err(ErrorData::invalid_params(format!("no prompt `{other}`; prompts/list has them"), None));
            }
        };
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).into())
    }
}

/// `/mcp` of `cairn serve`: MCP over streamable HTTP, each call sent to
/// `app` with the caller's key; sessions end with the server. With keys
/// (`auth`) any `Host` is served, since every call needs a key; without them
/// (`--no-auth`) only loopback hosts are, against DNS rebinding by a web page.
pub fn router(
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    auth: bool,
    max_body_bytes: usize,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
    let ct = tokio_util::sync::CancellationToken::new();
    {
        let ct = ct.clone();
        tokio::spawn(async move {
            let _ = stop.changed().await;
            ct.cancel();
        });
    }
    let mcp = Mcp::new(app);
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(ct);
    config.max_request_body_bytes = max_body_bytes;
    if auth {
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(move || Ok(mcp.clone()), LocalSessionManager::default().into(), config);
    axum::Router::new().nest_service("/mcp", service)
}

/// `cairn mcp`: MCP over stdio on the local database, acting as `--as`
/// (trusted as given, as every command on a local database is), until the
/// client closes the session. Logs go to stderr; stdout is the protocol's.
pub async fn stdio(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &crate::commands::setup::SetupArgs,
    args: crate::local::Args,
) -> anyhow::Result<std::process::ExitCode> {
    use rmcp::ServiceExt as _;
    crate::telemetry::init("text")?;
    let running = crate::local::start(database, read, setup, args).await?;
    let service = Mcp::new(running.app.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the MCP session: {e}"))?;
    let ended = service.waiting().await;
    running.finish().await;
    if let Err(e) = ended {
        anyhow::bail!("the MCP session ended: {e}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
