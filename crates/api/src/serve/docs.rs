//! `/docs`: Swagger UI, served from the binary. Its files come from the
//! Swagger UI release that the `utoipa-swagger-ui-vendored` crate carries
//! (a zip inside the crate, so nothing is fetched at build or run time);
//! the three files the page needs are inflated from it on first use.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State as S};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use super::State;
use super::problem::ApiError;

const FILES: [(&str, &str); 4] = [
    ("swagger-ui.css", "text/css; charset=utf-8"),
    ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    ("swagger-ui-standalone-preset.js", "text/javascript; charset=utf-8"),
    ("favicon-32x32.png", "image/png"),
];

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?)))
}

fn u32_at(b: &[u8], i: usize) -> Option<usize> {
    usize::try_from(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)).ok()
}

/// The `dist/` files of the vendored zip that the page uses, by name.
fn unzip(zip: &[u8], wanted: &[&str]) -> Option<HashMap<String, Vec<u8>>> {
    // End of central directory: signature 0x06054b50 within the last 64 KiB.
    let eocd = (0..zip.len().saturating_sub(21)).rev().find(|&i| zip[i..].starts_with(&[0x50, 0x4b, 0x05, 0x06]))?;
    let entries = u16_at(zip, eocd + 10)?;
    let mut at = u32_at(zip, eocd + 16)?;
    let mut out = HashMap::new();
    for _ in 0..entries {
        if !zip.get(at..)?.starts_with(&[0x50, 0x4b, 0x01, 0x02]) {
            return None;
        }
        let method = u16_at(zip, at + 10)?;
        let csize = u32_at(zip, at + 20)?;
        let name_len = u16_at(zip, at + 28)?;
        let extra_len = u16_at(zip, at + 30)?;
        let comment_len = u16_at(zip, at + 32)?;
        let local = u32_at(zip, at + 42)?;
        let name = std::str::from_utf8(zip.get(at + 46..at + 46 + name_len)?).ok()?;
        at += 46 + name_len + extra_len + comment_len;
        let Some(file) = name.split("/dist/").nth(1) else { continue };
        if !wanted.contains(&file) {
            continue;
        }
        let data_at = local + 30 + u16_at(zip, local + 26)? + u16_at(zip, local + 28)?;
        let raw = zip.get(data_at..data_at + csize)?;
        let bytes = match method {
            0 => raw.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec(raw).ok()?,
            _ => return None,
        };
        out.insert(file.to_owned(), bytes);
    }
    Some(out)
}

fn files() -> &'static HashMap<String, Vec<u8>> {
    static FILES_CACHE: OnceLock<HashMap<String, Vec<u8>>> = OnceLock::new();
    FILES_CACHE.get_or_init(|| {
        let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        unzip(utoipa_swagger_ui_vendored::SWAGGER_UI_VENDORED, &names).unwrap_or_default()
    })
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Cairn API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"##;

/// `GET /docs`.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /docs/{file}`.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some((name, ctype)) = FILES.iter().find(|(n, _)| *n == file) else {
        return Err(ApiError::not_found("no-such-file", format!("/docs has no file `{file}`")));
    };
    let Some(bytes) = files().get(*name) else {
        return Err(ApiError::internal(format!("the vendored Swagger UI lacks {name}")));
    };
    let mut r = bytes.clone().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    Ok(r)
}

/// `GET /openapi.json`.
pub async fn openapi(S(state): S<Arc<State>>) -> axum::Json<serde_json::Value> {
    axum::Json(state.openapi.clone())
}

/// Liveness.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The build.
    pub version: String,
}

/// Readiness.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Ready {
    /// `ready`, or `degraded` when read models set events aside (`parked`):
    /// serving, with those events missing from the read models until an
    /// operator retries or skips them (`cairn projections parked`).
    pub status: String,
    /// The log's head position.
    pub head_position: u64,
    /// How far the slowest read model is behind the log, in events.
    pub projection_lag: u64,
    /// Events the read models set aside.
    pub parked: u64,
    /// Runs not driven because the process died driving them
    /// (`cairn quarantine`); `degraded` when any.
    pub quarantined: u64,
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// `GET /readyz`: the event store and the read models answer.
pub async fn readyz(S(state): S<Arc<State>>) -> Result<axum::Json<Ready>, ApiError> {
    // The causes are logged, not sent: they name databases and files.
    if let Some(f) = state.store.write_failure() {
        // The last append failed: ready again only once a write succeeds.
        if let Err(e) = state.store.probe_write().await {
            tracing::error!(error = %e, since = %f.since, "readiness: writes to the event store fail");
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                format!(
                    "writes to the event store have failed since {}; what was recorded is intact; \
                     free disk space or fix the database (the cause is in the server's log)",
                    f.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
            ));
        }
    }
    let head = state.store.head_position().await.map_err(|e| {
        tracing::error!(error = %e, "readiness: the event store does not answer");
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not-ready", "the event store does not answer")
    })?;
    let status = state.read.status().await.map_err(|e| {
        tracing::error!(error = %e, "readiness: the read models do not answer");
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not-ready", "the read models do not answer")
    })?;
    if let Some((name, (at, e))) = status.iter().find_map(|s| s.error.clone().map(|e| (s.name.clone(), e))) {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("projection {name} stopped at position {at}: {e}"),
        ));
    }
    let lag = status.iter().map(|s| s.lag_events).max().unwrap_or(0);
    let parked: u64 = status.iter().map(|s| s.parked).sum();
    let quarantined = state.driver.quarantined() as u64;
    let word = if parked > 0 || quarantined > 0 { "degraded" } else { "ready" };
    Ok(axum::Json(Ready { status: word.into(), head_position: head, projection_lag: lag, parked, quarantined }))
}
