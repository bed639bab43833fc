//! `cairn serve`: the server's parts ([`super::start`]) on a socket, with
//! MCP over streamable HTTP at `/mcp` beside the API (kept out of
//! `serve/mod.rs`, which `cairn mcp` itself stands on).

use std::net::SocketAddr;
use std::process::ExitCode;

use super::{Args, signalled, start};

/// Runs the server until interrupted.
pub async fn run(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &crate::commands::setup::SetupArgs,
    args: Args,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&args.log_format)?;
    let addr: SocketAddr = args
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}; give an address like 127.0.0.1:8080", args.listen))?;
    if args.no_auth && !addr.ip().is_loopback() && !args.insecure {
        eprintln!(
            "error: refusing to serve {addr} without API keys: anyone who can reach it could start, cancel and \
             approve runs. Create a key (cairn keys create --name NAME --role admin) and drop --no-auth, listen \
             on 127.0.0.1, or add --insecure if this network is trusted."
        );
        return Ok(crate::codes::exit("insecure-listen"));
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let running = start(database, read, setup, &args).await?;
    // MCP over streamable HTTP at /mcp: each tool call is a request to the
    // API with the caller's key.
    let mcp = crate::mcp::router(running.app.clone(), running.stop.clone(), !args.no_auth, args.max_body_bytes);
    let app = running.app.clone().merge(mcp);
    let local = listener.local_addr()?;
    out!("listening on http://{local}");
    tracing::info!(address = %local, database = %running.state.store.describe(), auth = !args.no_auth, "serving");
    // Ctrl-C or SIGTERM: stop taking requests, let the ones in flight
    // finish, stop the background tasks. Nothing is lost either way: what
    // was recorded is durable, and a run cut off continues on the next start.
    let stop_tx = running.stop_tx.clone();
    let shutdown = async move {
        signalled().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    // Small responses and SSE events go out at once (no Nagle delay against
    // the client's delayed ACK: 40 ms per request otherwise).
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    running.finish().await;
    Ok(ExitCode::SUCCESS)
}
