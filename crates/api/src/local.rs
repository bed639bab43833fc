//! Requests to the API's own router inside this process (no socket): how
//! `cairn mcp` and `cairn tui` act, so their roles, identity, validation,
//! problems and audit are the API's.

use axum::http::{HeaderValue, Method, Request, header};
use serde_json::Value;

/// A request body.
pub enum Body {
    Json(Value),
    Yaml(String),
}

/// Sends one request to `app`: its status and body (JSON, or the text as a
/// JSON string). `auth` is the caller's `Authorization` (over HTTP).
pub async fn request(
    app: &axum::Router,
    method: Method,
    path: &str,
    body: Option<Body>,
    headers: &[(&str, String)],
    auth: Option<HeaderValue>,
) -> anyhow::Result<(u16, Value)> {
    use tower::ServiceExt as _;
    let mut b = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        b = b.header(header::AUTHORIZATION, auth);
    }
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let req = match body {
        Some(Body::Json(v)) => {
            b.header(header::CONTENT_TYPE, "application/json").body(axum::body::Body::from(v.to_string()))
        }
        Some(Body::Yaml(y)) => b.header(header::CONTENT_TYPE, "application/yaml").body(axum::body::Body::from(y)),
        None => b.body(axum::body::Body::empty()),
    }
    .map_err(|e| anyhow::anyhow!("cannot make the request: {e}"))?;
    let r = app.clone().oneshot(req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = r.status().as_u16();
    let bytes = axum::body::to_bytes(r.into_body(), 64 << 20)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the answer: {e}"))?;
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

/// Arguments of the commands that stand on a local server (`cairn mcp`,
/// `cairn tui`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A file of `NAME=value` secret lines, added to the
    /// `CAIRN_SECRET_<NAME>` environment variables.
    #[arg(long)]
    pub secrets_file: Option<std::path::PathBuf>,
}

/// The server's parts, started without a listener as `--as` (or
/// `anonymous`) with every permission: what `cairn mcp` over stdio and
/// `cairn tui` stand on (a local database is trusted as given).
pub async fn start(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &crate::commands::setup::SetupArgs,
    args: Args,
) -> anyhow::Result<crate::serve::Running> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: crate::serve::Args,
    }
    let mut serve = Serve::try_parse_from(["cairn", "--no-auth"])?.args;
    serve.secrets_file = args.secrets_file;
    crate::serve::start(database, read, setup, &serve).await
}
