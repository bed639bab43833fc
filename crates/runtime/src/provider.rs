//! The wire protocols behind AI steps: OpenAI-compatible chat completions,
//! Anthropic messages, and the deterministic scripted provider. One call is
//! one attempt; its reply or failure is classified here, judged by the
//! decider.

use std::time::{Duration, Instant};

use cairn_events::AiMessage;
use serde_json::{Value, json};

use cairn_core::config::{OutputMode, Provider, ProviderKind};

/// What one attempt sends.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Model name sent to the provider.
    pub model: &'a str,
    /// The rendered messages.
    pub messages: &'a [AiMessage],
    /// Structured-output mode.
    pub mode: OutputMode,
    /// The output contract, sent as the schema in `json_schema` mode.
    pub schema: Option<&'a Value>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Most output tokens.
    pub max_output_tokens: Option<u32>,
    /// Sent as `Idempotency-Key` (run, step, AI attempt).
    pub idempotency_key: &'a str,
}

/// A reply to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The model's text (a forced tool call's arguments as JSON text).
    pub raw: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Finish or stop reason.
    pub finish_reason: Option<String>,
}

/// An attempt that produced no reply to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `ai.connect`, `ai.timeout`, `ai.rate_limited`, `ai.status`,
    /// `ai.auth`, `ai.mode_rejected`, `ai.response`, `ai.config`.
    pub kind: String,
    /// What happened.
    pub message: String,
    /// Whether another attempt may help.
    pub retryable: bool,
    /// HTTP status.
    pub status: Option<u16>,
    /// `Retry-After`, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// The server refused the structured-output mode.
    pub mode_rejected: bool,
}

fn fail(kind: &str, message: String, retryable: bool) -> Failure {
    Failure { kind: kind.into(), message, retryable, status: None, retry_after_ms: None, mode_rejected: false }
}

/// Makes one call. `scripted` holds the step's scripted replies (already
/// rendered) and `number` the AI attempt number that picks one.
pub async fn call(
    client: &reqwest::Client,
    provider: &Provider,
    req: &Request<'_>,
    scripted: &[Value],
    number: u32,
) -> Result<Reply, Failure> {
    match provider.kind {
        ProviderKind::Scripted => scripted_reply(req, scripted, number),
        ProviderKind::Openai => openai(client, provider, req).await,
        ProviderKind::Anthropic => anthropic(client, provider, req).await,
    }
}

fn api_key(p: &Provider) -> Result<Option<String>, Failure> {
    match &p.api_key_env {
        None => Ok(None),
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_owned())),
            _ => Err(fail("ai.config", format!("the API key variable {var} is not set; export {var}=…"), false)),
        },
    }
}

/// The response format for a mode, when the step has a contract.
fn uses_schema(req: &Request<'_>) -> bool {
    req.schema.is_some() && req.mode != OutputMode::None
}

async fn openai(client: &reqwest::Client, p: &Provider, req: &Request<'_>) -> Result<Reply, Failure> {
    let url = format!("{}/chat/completions", p.base_url);
    let mut body = json!({
        "model": req.model,
        "messages": req.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = req.max_output_tokens {
        body["max_tokens"] = json!(n);
    }
    if let (true, Some(schema)) = (uses_schema(req), req.schema) {
        body["response_format"] = match req.mode {
            OutputMode::JsonSchema => {
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": false}})
            }
            _ => json!({"type": "json_object"}),
        };
    }
    let mut rb = client
        .post(&url)
        .timeout(p.timeout)
        .header("Idempotency-Key", req.idempotency_key)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = api_key(p)? {
        rb = rb.bearer_auth(k);
    }
    for (k, v) in &p.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let v = send(rb, &url, p.timeout, uses_schema(req)).await?;
    let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| {
        fail("ai.response", format!("{url} answered without `choices`: {}", snippet(&v.to_string())), true)
    })?;
    let msg = choice.get("message");
    let raw = match msg.and_then(|m| m.get("content")).and_then(Value::as_str) {
        Some(t) => t.to_owned(),
        None => msg
            .and_then(|m| m.get("tool_calls"))
            .and_then(|t| t.get(0))
            .and_then(|t| t.pointer("/function/arguments"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail("ai.response", format!("{url} answered a message with no content"), true))?,
    };
    let usage = v.get("usage");
    let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    Ok(Reply {
        input_tokens: tokens("prompt_tokens").unwrap_or_else(|| cairn_core::ai::estimate_tokens(req.messages)),
        output_tokens: tokens("completion_tokens").unwrap_or_else(|| (raw.chars().count() as u64).div_ceil(4)),
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_owned),
        raw,
    })
}

async fn anthropic(client: &reqwest::Client, p: &Provider, req: &Request<'_>) -> Result<Reply, Failure> {
    let url = format!("{}/v1/messages", p.base_url);
    let system: Vec<&str> = req.messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let messages: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_output_tokens.unwrap_or(1024),
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    // Anthropic's structured output is a forced tool call whose input
    // schema is the contract (which must describe an object).
    let tool = req.mode == OutputMode::JsonSchema
        && req.schema.is_some_and(|s| s.get("type").and_then(Value::as_str) == Some("object"));
    if let (true, Some(schema)) = (tool, req.schema) {
        body["tools"] = json!([{"name": "output", "description": "Record the reply.", "input_schema": schema}]);
        body["tool_choice"] = json!({"type": "tool", "name": "output"});
    }
    let mut rb = client
        .post(&url)
        .timeout(p.timeout)
        .header("anthropic-version", "2023-06-01")
        .header("Idempotency-Key", req.idempotency_key)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = api_key(p)? {
        rb = rb.header("x-api-key", k);
    }
    for (k, v) in &p.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let v = send(rb, &url, p.timeout, tool).await?;
    let blocks = v.get("content").and_then(Value::as_array).ok_or_else(|| {
        fail("ai.response", format!("{url} answered without `content`: {}", snippet(&v.to_string())), true)
    })?;
    let raw = match blocks.iter().find(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")) {
        Some(b) => b.get("input").map(Value::to_string).unwrap_or_default(),
        None => blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""),
    };
    let usage = v.get("usage");
    let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    Ok(Reply {
        input_tokens: tokens("input_tokens").unwrap_or_else(|| cairn_core::ai::estimate_tokens(req.messages)),
        output_tokens: tokens("output_tokens").unwrap_or_else(|| (raw.chars().count() as u64).div_ceil(4)),
        finish_reason: v.get("stop_reason").and_then(Value::as_str).map(str::to_owned),
        raw,
    })
}

/// Sends a request and classifies what comes back. `structured` says the
/// request asked for a structured-output mode, which a server may refuse.
async fn send(rb: reqwest::RequestBuilder, url: &str, timeout: Duration, structured: bool) -> Result<Value, Failure> {
    let resp = rb.send().await.map_err(|e| {
        if e.is_timeout() {
            fail("ai.timeout", format!("no answer within {timeout:?} from {url}"), true)
        } else {
            fail("ai.connect", format!("cannot reach {url}: {}", root_cause(&e)), true)
        }
    })?;
    let status = resp.status().as_u16();
    let header_ms = |name: &str, scale: u64| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| (v * scale as f64) as u64)
    };
    let retry_after_ms = header_ms("retry-after-ms", 1).or_else(|| header_ms("retry-after", 1000));
    let text = resp.text().await.map_err(|e| {
        if e.is_timeout() {
            fail("ai.timeout", format!("the answer from {url} did not arrive within {timeout:?}"), true)
        } else {
            fail("ai.connect", format!("reading the answer from {url}: {}", root_cause(&e)), true)
        }
    })?;
    if status >= 400 {
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").or_else(|| v.get("error")).or_else(|| v.get("message")).cloned())
            .map(|m| m.as_str().map(str::to_owned).unwrap_or_else(|| m.to_string()))
            .unwrap_or_else(|| snippet(&text));
        let message = format!("{url} answered {status}: {detail}");
        // Some servers answer 500 (llama.cpp) or 400/422 (vLLM, older
        // OpenAI-compatible servers) to a response format they lack.
        let mode_rejected = structured && matches!(status, 400 | 415 | 422 | 500 | 501);
        let (kind, retryable) = match status {
            _ if mode_rejected => ("ai.mode_rejected", true),
            429 => ("ai.rate_limited", true),
            401 | 403 => ("ai.auth", false),
            s if s >= 500 => ("ai.status", true),
            408 | 409 => ("ai.status", true),
            _ => ("ai.status", false),
        };
        return Err(Failure {
            kind: kind.into(),
            message,
            retryable,
            status: Some(status),
            retry_after_ms,
            mode_rejected,
        });
    }
    serde_json::from_str(&text).map_err(|e| {
        let mut f = fail(
            "ai.response",
            format!("{url} answered {status} with a body that is not JSON ({e}): {}", snippet(&text)),
            true,
        );
        f.status = Some(status);
        f
    })
}

/// The scripted provider: the reply for AI attempt `number` (the last one
/// repeats). A reply is a string (the text), or `{ content, input_tokens,
/// output_tokens, finish_reason }`, or a failure: `{ error: connect |
/// timeout | malformed }`, `{ status: 429, retry_after: 1 }`, or
/// `{ reject_mode: json_schema }` (answers 500 to that mode, like some
/// servers do).
fn scripted_reply(req: &Request<'_>, scripted: &[Value], number: u32) -> Result<Reply, Failure> {
    let Some(reply) = scripted.get((number.max(1) as usize - 1).min(scripted.len().saturating_sub(1))) else {
        return Err(fail(
            "ai.config",
            "the scripted provider has no replies for this step; give the step `scripted: [...]`".into(),
            false,
        ));
    };
    let text_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let usage = |raw: &str, r: &Value| {
        let get = |k: &str| r.get(k).and_then(Value::as_u64);
        (
            get("input_tokens").unwrap_or_else(|| cairn_core::ai::estimate_tokens(req.messages)),
            get("output_tokens").unwrap_or_else(|| (raw.chars().count() as u64).div_ceil(4)),
        )
    };
    let obj = match reply {
        Value::Object(o) => o,
        other => {
            let raw = text_of(other);
            let (i, o) = usage(&raw, &Value::Null);
            return Ok(Reply { raw, input_tokens: i, output_tokens: o, finish_reason: Some("stop".into()) });
        }
    };
    let message = obj.get("message").and_then(Value::as_str);
    if let Some(mode) = obj.get("reject_mode").and_then(Value::as_str) {
        if req.mode.name() == mode && req.schema.is_some() {
            return Err(Failure {
                kind: "ai.mode_rejected".into(),
                message: message.unwrap_or("scripted: the server does not support this response format").into(),
                retryable: true,
                status: Some(500),
                retry_after_ms: None,
                mode_rejected: true,
            });
        }
    } else if let Some(e) = obj.get("error").and_then(Value::as_str) {
        let (kind, default) = match e {
            "timeout" => ("ai.timeout", "scripted: the model did not answer in time"),
            "malformed" => ("ai.response", "scripted: the answer was not valid JSON"),
            _ => ("ai.connect", "scripted: connection refused"),
        };
        return Err(fail(kind, message.unwrap_or(default).into(), true));
    } else if let Some(status) = obj.get("status").and_then(Value::as_u64) {
        let status = u16::try_from(status).unwrap_or(500);
        return Err(Failure {
            kind: if status == 429 { "ai.rate_limited" } else { "ai.status" }.into(),
            message: message.map_or_else(|| format!("scripted: the provider answered {status}"), str::to_owned),
            retryable: status == 429 || status >= 500,
            status: Some(status),
            retry_after_ms: obj.get("retry_after").and_then(Value::as_f64).map(|s| (s * 1000.0) as u64),
            mode_rejected: false,
        });
    }
    let raw = obj.get("content").map(text_of).unwrap_or_default();
    let (i, o) = usage(&raw, reply);
    Ok(Reply {
        finish_reason: Some(obj.get("finish_reason").and_then(Value::as_str).unwrap_or("stop").to_owned()),
        raw,
        input_tokens: i,
        output_tokens: o,
    })
}

/// Measures a call.
pub fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn snippet(t: &str) -> String {
    let s: String = t.chars().take(300).collect();
    if t.chars().count() > 300 { format!("{s}…") } else { s }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
