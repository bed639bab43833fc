//! The `http` step's effect: one request, its response captured as the
//! step's output, failures classified for the retry policy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::tasks::TaskError;

/// Largest response body kept, in bytes.
pub const MAX_BODY: usize = 10 << 20;

/// A client with TLS (rustls, ring) and no proxies from the environment.
pub fn client() -> reqwest::Client {
    // Installing twice is harmless: the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn err(kind: &str, message: String, retryable: bool) -> TaskError {
    TaskError::new(kind, message, retryable)
}

/// Sends `request` (`{method, url, headers, query, body}`, rendered) with an
/// `Idempotency-Key` header. 2xx and 3xx are success. Connection errors,
/// timeouts, 5xx and 429 are retryable (429 and 503 honour `Retry-After`);
/// other 4xx are not, unless listed in `retry_on_status`.
pub async fn send(
    client: &reqwest::Client,
    request: &Value,
    timeout: Duration,
    idempotency_key: &str,
    retry_on_status: &[u16],
    traceparent: &str,
) -> Result<Value, TaskError> {
    let method = request.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| err("http.request", format!("`{method}` is not an HTTP method"), false))?;
    let url_text = match request.get("url") {
        Some(Value::String(u)) => u.clone(),
        other => {
            return Err(err(
                "http.request",
                format!("the url rendered to {}, not a string", other.unwrap_or(&Value::Null)),
                false,
            ));
        }
    };
    let mut url = reqwest::Url::parse(&url_text)
        .map_err(|e| err("http.request", format!("`{url_text}` is not a URL: {e}"), false))?;
    if let Some(q) = request.get("query").and_then(Value::as_object) {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in q {
            pairs.append_pair(k, &scalar(v));
        }
    }
    let mut rb = client.request(method, url).timeout(timeout).header("Idempotency-Key", idempotency_key);
    let headers = request.get("headers").and_then(Value::as_object);
    // The step attempt's span, as the W3C trace context says (unless the
    // step sets its own).
    if !headers.is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("traceparent"))) {
        rb = rb.header("traceparent", traceparent);
    }
    if let Some(h) = headers {
        for (k, v) in h {
            rb = rb.header(k.as_str(), scalar(v));
        }
    }
    match request.get("body") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => rb = rb.body(text.clone()),
        Some(body) => {
            rb = rb.header("Content-Type", "application/json").body(body.to_string());
        }
    }
    let resp = rb.send().await.map_err(|e| {
        if e.is_timeout() {
            err("http.timeout", format!("no response within {timeout:?} from {url_text}"), true)
        } else if e.is_builder() {
            err("http.request", format!("invalid request to {url_text}: {e}"), false)
        } else {
            err("http.connect", format!("cannot reach {url_text}: {}", root_cause(&e)), true)
        }
    })?;
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, Value> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
        .collect();
    let retry_after_ms = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    let bytes = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            err("http.timeout", format!("the body from {url_text} did not arrive within {timeout:?}"), true)
        } else {
            err("http.connect", format!("reading the body from {url_text}: {}", root_cause(&e)), true)
        }
    })?;
    if bytes.len() > MAX_BODY {
        return Err(err(
            "http.body_too_large",
            format!("the response from {url_text} is {} bytes; the limit is {MAX_BODY}", bytes.len()),
            false,
        ));
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text.clone()));
    if status >= 400 {
        let retryable = status >= 500 || status == 429 || retry_on_status.contains(&status);
        let snippet: String = text.chars().take(300).collect();
        // The status in the kind (`http.status.503`), so retriers and
        // `catch` tell a 500 from a 503; `http.status` matches them all.
        let mut e =
            err(&format!("http.status.{status}"), format!("{url_text} answered {status}: {snippet}"), retryable);
        e.retry_after_ms = retry_after_ms;
        return Err(e);
    }
    Ok(json!({ "status": status, "headers": headers, "body": body }))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
