//! `cairn verify`: walk the log and check every chain link.

use crate::codes;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `cairn verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every break found, not only the first.
    #[arg(long)]
    pub all: bool,
    /// Check an export file (from `cairn export`) offline instead of the log.
    #[arg(long, value_name = "FILE")]
    pub export: Option<std::path::PathBuf>,
}

/// Runs the command: exit 0 when intact, 1 when broken.
pub async fn run(database: &str, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.export {
        return super::export::verify(file);
    }
    let store = cairn_events::open_existing(database).await?;
    let report = cairn_events::verify(&*store).await.with_context(|| format!("verifying {}", store.describe()))?;
    if report.is_intact() {
        out!(
            "intact: {} events in {} streams, positions 1..={}, every hash chain verified ({})",
            report.events,
            report.streams,
            report.head_position,
            store.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let first = report.first_break().map(ToString::to_string).unwrap_or_default();
    eprintln!("BROKEN: {first}");
    if args.all {
        for b in report.breaks.iter().skip(1) {
            eprintln!("  also: {b}");
        }
    } else if report.breaks.len() > 1 {
        eprintln!("  ({} more breaks; --all lists them)", report.breaks.len() - 1);
    }
    eprintln!("{} events in {} streams checked in {}", report.events, report.streams, store.describe());
    Ok(codes::exit("chain-broken"))
}
