//! `cairn export`: a compliance export of the log that `cairn verify
//! --export` (or anyone following docs/compliance.md) checks offline.

use crate::codes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cairn_events::export::{ExportFilter, Format};

/// Arguments of `cairn export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `jsonl` (records, heads and manifest in one file) or `csv` (the
    /// manifest beside it as FILE.manifest.json).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
    pub format: String,
    /// Events recorded at or after this RFC 3339 instant.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events recorded before this RFC 3339 instant.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this run's events.
    #[arg(long)]
    pub run: Option<uuid::Uuid>,
    /// The file to write (default: standard output; required for CSV).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// The manifest file beside a CSV export.
pub fn sidecar_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Runs `cairn export`.
pub async fn run(database: &str, args: Args) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open_existing(database).await?;
    let filter = ExportFilter {
        since: args.since,
        until: args.until,
        stream: args.run.map(cairn_events::run_stream),
        through: None,
    };
    let format = if args.format == "csv" { Format::Csv } else { Format::Jsonl };
    let manifest = match (&args.output, format) {
        (None, Format::Csv) => {
            anyhow::bail!("a CSV export needs --output FILE (its manifest goes to FILE.manifest.json)")
        }
        (None, Format::Jsonl) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let m = cairn_events::export::export(&*store, &filter, format, &mut out, None).await?;
            out.flush()?;
            m
        }
        (Some(path), _) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let m = if format == Format::Csv {
                let side = sidecar_of(path);
                let f = std::fs::File::create(&side).with_context(|| format!("creating {}", side.display()))?;
                let mut side = std::io::BufWriter::new(f);
                let m = cairn_events::export::export(&*store, &filter, format, &mut out, Some(&mut side)).await?;
                side.flush()?;
                m
            } else {
                cairn_events::export::export(&*store, &filter, format, &mut out, None).await?
            };
            out.flush()?;
            m
        }
    };
    eprintln!(
        "exported {} events of {} streams, positions {}..={}, records SHA-256 {}",
        manifest.count, manifest.streams, manifest.first_position, manifest.last_position, manifest.records_sha256
    );
    Ok(ExitCode::SUCCESS)
}

/// `cairn verify --export FILE`: checks an export offline; exit 1 naming
/// the first bad record.
pub fn verify(path: &Path) -> anyhow::Result<ExitCode> {
    let csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut records = std::io::BufReader::new(file);
    let result = if csv {
        let side = sidecar_of(path);
        let f = std::fs::File::open(&side).with_context(|| format!("opening the manifest {}", side.display()))?;
        let mut side = std::io::BufReader::new(f);
        cairn_events::export::verify_export(&mut records, Format::Csv, Some(&mut side))
    } else {
        cairn_events::export::verify_export(&mut records, Format::Jsonl, None)
    };
    match result {
        Ok(m) => {
            out!(
                "intact: {} records of {} streams, positions {}..={}, every hash, link and the manifest verified",
                m.count,
                m.streams,
                m.first_position,
                m.last_position
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            eprintln!("BROKEN: {}: {b}", path.display());
            Ok(codes::exit("chain-broken"))
        }
    }
}
