//! `cairn events`: print stored events as JSON lines.

use std::io::Write;
use std::process::ExitCode;

/// Arguments of `cairn events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this stream (for example `run-<uuid>`); the whole log otherwise.
    #[arg(long)]
    pub stream: Option<String>,
    /// First stream version (with --stream) or global position to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most events to print.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// Runs the command.
pub async fn run(database: &str, args: Args) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open_existing(database).await?;
    let events = match &args.stream {
        Some(s) => {
            let mut e = store.read_stream(s, args.from).await?;
            e.truncate(args.limit);
            e
        }
        None => store.read_all(args.from, args.limit).await?,
    };
    let mut out = std::io::stdout().lock();
    for e in &events {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
