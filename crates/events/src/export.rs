//! Compliance export: the log (or the part a filter picks) as JSON lines or
//! CSV, each record with its position and hash and every field the hash
//! covers, exactly as stored; then, per stream, its chain heads; then a
//! manifest with the range, the count and the SHA-256 of the records. Written
//! as it is read, in pages: memory grows with the number of streams
//! exported, never with the number of events. [`verify_export`] checks a
//! file offline; docs/compliance.md specifies the algorithm so that an
//! auditor can check it without Cairn.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chain::{GENESIS_HASH, HashedFields, event_hash};
use crate::envelope::RecordedEvent;
use crate::store::{EventStore, StoreError};

/// Which events an export holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportFilter {
    /// Events recorded at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Events recorded before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Only this stream (`run-<id>` for a run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Events at or before this global position (an export taken twice
    /// with the same bound holds the same records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<u64>,
}

impl ExportFilter {
    fn admits(&self, e: &RecordedEvent) -> bool {
        if self.stream.as_ref().is_some_and(|s| s != &e.stream_id)
            || self.through.is_some_and(|t| e.global_position > t)
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(at) = DateTime::parse_from_rfc3339(&e.recorded_at) else { return true };
        let at = at.with_timezone(&Utc);
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }
}

/// The two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line; heads and manifest follow as lines.
    Jsonl,
    /// RFC 4180 CSV with a header row; heads and manifest go to a
    /// `.manifest.json` file beside it.
    Csv,
}

/// One exported event: every hashed field as its stored text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Global position.
    pub position: u64,
    /// Stream id.
    pub stream_id: String,
    /// Version in the stream.
    pub stream_version: u64,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Schema version.
    pub schema_version: u32,
    /// `recorded_at`, as stored.
    pub recorded_at: String,
    /// Metadata JSON text, as stored.
    pub metadata: String,
    /// Payload JSON text, as stored.
    pub payload: String,
    /// The previous event's hash in the stream.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// A stream's chain within the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Stream id.
    pub stream_id: String,
    /// Its first exported version.
    pub first_version: u64,
    /// The `prev_hash` of that version (the genesis hash when it is 1).
    pub first_prev_hash: String,
    /// Its last exported version.
    pub last_version: u64,
    /// The hash of that version: the chain head.
    pub last_hash: String,
}

/// What an export holds, and the hash of its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The export format's version.
    pub export_version: u32,
    /// When it was written.
    pub generated_at: DateTime<Utc>,
    /// The filter it was written with.
    pub filter: ExportFilter,
    /// Lowest position exported (0 when none).
    pub first_position: u64,
    /// Highest position exported (0 when none).
    pub last_position: u64,
    /// Records exported.
    pub count: u64,
    /// Streams exported.
    pub streams: u64,
    /// SHA-256 (hex) of the record lines, each with its `\n` (JSONL), or of
    /// the CSV file's bytes.
    pub records_sha256: String,
}

/// The format version written by this build.
pub const EXPORT_VERSION: u32 = 1;

/// Problems writing an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

const CSV_COLUMNS: [&str; 11] = [
    "position",
    "stream_id",
    "stream_version",
    "event_id",
    "event_type",
    "schema_version",
    "recorded_at",
    "metadata",
    "payload",
    "prev_hash",
    "hash",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

impl Record {
    fn of(e: &RecordedEvent) -> Record {
        Record {
            position: e.global_position,
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at.clone(),
            metadata: e.metadata.clone(),
            payload: e.payload.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }

    fn csv_line(&self) -> String {
        let v = [
            self.position.to_string(),
            csv_field(&self.stream_id),
            self.stream_version.to_string(),
            csv_field(&self.event_id),
            csv_field(&self.event_type),
            self.schema_version.to_string(),
            csv_field(&self.recorded_at),
            csv_field(&self.metadata),
            csv_field(&self.payload),
            csv_field(&self.prev_hash),
            csv_field(&self.hash),
        ];
        format!("{}\r\n", v.join(","))
    }

    fn computed_hash(&self) -> String {
        event_hash(
            &self.prev_hash,
            &HashedFields {
                stream_id: &self.stream_id,
                stream_version: self.stream_version,
                event_id: &self.event_id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                recorded_at: &self.recorded_at,
                metadata: &self.metadata,
                payload: &self.payload,
            },
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Trailer {
    Head(Head),
    Manifest(Manifest),
}

/// Writes an export of what `filter` picks to `out`; for CSV the heads and
/// manifest go to `sidecar` (JSON lines), for JSONL after the records.
/// Returns the manifest.
pub async fn export(
    store: &dyn EventStore,
    filter: &ExportFilter,
    format: Format,
    out: &mut dyn Write,
    sidecar: Option<&mut dyn Write>,
) -> Result<Manifest, ExportError> {
    let mut digest = Sha256::new();
    let mut heads: BTreeMap<String, Head> = BTreeMap::new();
    let (mut first, mut last, mut count) = (0u64, 0u64, 0u64);
    if format == Format::Csv {
        let header = format!("{}\r\n", CSV_COLUMNS.join(","));
        digest.update(header.as_bytes());
        out.write_all(header.as_bytes())?;
    }
    let mut from = 1;
    loop {
        let page = store.read_all(from, 1000).await?;
        let Some(tail) = page.last() else { break };
        if filter.through.is_some_and(|t| page[0].global_position > t) {
            break;
        }
        from = tail.global_position + 1;
        for e in page.iter().filter(|e| filter.admits(e)) {
            let r = Record::of(e);
            let line = match format {
                Format::Jsonl => format!("{}\n", serde_json::to_string(&r).unwrap_or_default()),
                Format::Csv => r.csv_line(),
            };
            digest.update(line.as_bytes());
            out.write_all(line.as_bytes())?;
            if first == 0 {
                first = r.position;
            }
            last = r.position;
            count += 1;
            heads
                .entry(r.stream_id.clone())
                .and_modify(|h| {
                    h.last_version = r.stream_version;
                    h.last_hash = r.hash.clone();
                })
                .or_insert_with(|| Head {
                    stream_id: r.stream_id.clone(),
                    first_version: r.stream_version,
                    first_prev_hash: r.prev_hash.clone(),
                    last_version: r.stream_version,
                    last_hash: r.hash.clone(),
                });
        }
    }
    let manifest = Manifest {
        export_version: EXPORT_VERSION,
        generated_at: crate::clock::ClockHandle::default().now(),
        filter: filter.clone(),
        first_position: first,
        last_position: last,
        count,
        streams: heads.len() as u64,
        records_sha256: hex::encode(digest.finalize()),
    };
    let trailer: &mut dyn Write = match sidecar {
        Some(s) => s,
        None => out,
    };
    for h in heads.into_values() {
        writeln!(trailer, "{}", serde_json::to_string(&Trailer::Head(h)).unwrap_or_default())?;
    }
    writeln!(trailer, "{}", serde_json::to_string(&Trailer::Manifest(manifest.clone())).unwrap_or_default())?;
    trailer.flush()?;
    Ok(manifest)
}

/// Where an export was found not to be what Cairn wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBreak {
    /// The 1-based line (JSONL) or record (CSV) number.
    pub line: u64,
    /// The record's position, when known.
    pub position: Option<u64>,
    /// What is wrong.
    pub detail: String,
}

impl std::fmt::Display for ExportBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(p) => write!(f, "line {} (position {p}): {}", self.line, self.detail),
            None => write!(f, "line {}: {}", self.line, self.detail),
        }
    }
}

/// Checks an export offline: every record's hash, each stream's links and
/// versions, positions in order, the heads, and the manifest's range, count
/// and records hash. `records` is the JSONL file, or the CSV file with its
/// `sidecar` manifest. Returns the manifest, or the first break.
pub fn verify_export(
    records: &mut dyn BufRead,
    format: Format,
    sidecar: Option<&mut dyn BufRead>,
) -> Result<Manifest, ExportBreak> {
    let brk = |line: u64, position: Option<u64>, detail: String| ExportBreak { line, position, detail };
    let mut digest = Sha256::new();
    let mut heads: BTreeMap<String, Head> = BTreeMap::new();
    let mut trailers: Vec<(u64, Trailer)> = Vec::new();
    let (mut first, mut last, mut count) = (0u64, 0u64, 0u64);
    let mut check = |n: u64, r: Record, digest_line: &[u8], digest: &mut Sha256| -> Result<(), ExportBreak> {
        digest.update(digest_line);
        let p = Some(r.position);
        if r.computed_hash() != r.hash {
            return Err(brk(
                n,
                p,
                format!("hash mismatch in {} version {}: the record was changed", r.stream_id, r.stream_version),
            ));
        }
        if r.position <= last {
            return Err(brk(n, p, format!("position {} does not follow position {last}", r.position)));
        }
        match heads.get_mut(&r.stream_id) {
            Some(h) => {
                if r.stream_version != h.last_version + 1 {
                    return Err(brk(
                        n,
                        p,
                        format!(
                            "{} jumps from version {} to {}: records are missing",
                            r.stream_id, h.last_version, r.stream_version
                        ),
                    ));
                }
                if r.prev_hash != h.last_hash {
                    return Err(brk(
                        n,
                        p,
                        format!(
                            "{} version {} does not link to version {}",
                            r.stream_id, r.stream_version, h.last_version
                        ),
                    ));
                }
                h.last_version = r.stream_version;
                h.last_hash = r.hash.clone();
            }
            None => {
                if r.stream_version == 1 && r.prev_hash != GENESIS_HASH {
                    return Err(brk(n, p, format!("{} version 1 does not start from the genesis hash", r.stream_id)));
                }
                heads.insert(
                    r.stream_id.clone(),
                    Head {
                        stream_id: r.stream_id.clone(),
                        first_version: r.stream_version,
                        first_prev_hash: r.prev_hash.clone(),
                        last_version: r.stream_version,
                        last_hash: r.hash.clone(),
                    },
                );
            }
        }
        if first == 0 {
            first = r.position;
        }
        last = r.position;
        count += 1;
        Ok(())
    };
    let mut n = 0u64;
    match format {
        Format::Jsonl => {
            for line in records.lines() {
                n += 1;
                let line = line.map_err(|e| brk(n, None, format!("unreadable: {e}")))?;
                if line.starts_with("{\"head\"") || line.starts_with("{\"manifest\"") {
                    let t: Trailer = serde_json::from_str(&line)
                        .map_err(|e| brk(n, None, format!("not a head or manifest: {e}")))?;
                    trailers.push((n, t));
                    continue;
                }
                if !trailers.is_empty() {
                    return Err(brk(n, None, "a record after the manifest".into()));
                }
                let r: Record = serde_json::from_str(&line).map_err(|e| brk(n, None, format!("not a record: {e}")))?;
                check(n, r, format!("{line}\n").as_bytes(), &mut digest)?;
            }
        }
        Format::Csv => {
            let mut text = String::new();
            records.read_to_string(&mut text).map_err(|e| brk(0, None, format!("unreadable: {e}")))?;
            let rows = parse_csv(&text).map_err(|(line, e)| brk(line, None, e))?;
            let mut it = rows.into_iter();
            let Some(header) = it.next() else { return Err(brk(1, None, "the file is empty".into())) };
            if header.fields != CSV_COLUMNS {
                return Err(brk(1, None, format!("the header is not {}", CSV_COLUMNS.join(","))));
            }
            digest.update(header.raw.as_bytes());
            for CsvRow { line, fields: row, raw } in it {
                n += 1;
                let num = |i: usize| {
                    row[i].parse::<u64>().map_err(|_| brk(line, None, format!("`{}` is not a number", row[i])))
                };
                let r = Record {
                    position: num(0)?,
                    stream_id: row[1].clone(),
                    stream_version: num(2)?,
                    event_id: row[3].clone(),
                    event_type: row[4].clone(),
                    schema_version: u32::try_from(num(5)?).unwrap_or(u32::MAX),
                    recorded_at: row[6].clone(),
                    metadata: row[7].clone(),
                    payload: row[8].clone(),
                    prev_hash: row[9].clone(),
                    hash: row[10].clone(),
                };
                check(line, r, raw.as_bytes(), &mut digest)?;
            }
            let Some(side) = sidecar else { return Err(brk(0, None, "a CSV export needs its .manifest.json".into())) };
            for (i, line) in side.lines().enumerate() {
                let line = line.map_err(|e| brk(0, None, format!("manifest unreadable: {e}")))?;
                let t: Trailer = serde_json::from_str(&line)
                    .map_err(|e| brk(i as u64 + 1, None, format!("manifest line {}: {e}", i + 1)))?;
                trailers.push((i as u64 + 1, t));
            }
        }
    }
    let Some((mline, Trailer::Manifest(m))) = trailers.pop() else {
        return Err(brk(n, None, "no manifest at the end: the export was cut short".into()));
    };
    let mut listed = 0;
    for (line, t) in &trailers {
        let Trailer::Head(h) = t else { return Err(brk(*line, None, "two manifests".into())) };
        listed += 1;
        if heads.get(&h.stream_id) != Some(h) {
            return Err(brk(*line, None, format!("the head of {} does not match its records", h.stream_id)));
        }
    }
    let sha = hex::encode(digest.finalize());
    let problems = [
        (listed != heads.len(), format!("the manifest lists {listed} stream heads; the records hold {}", heads.len())),
        (m.count != count, format!("the manifest counts {} records; there are {count}", m.count)),
        (
            m.streams != heads.len() as u64,
            format!("the manifest counts {} streams; there are {}", m.streams, heads.len()),
        ),
        (
            (m.first_position, m.last_position) != (first, last),
            format!(
                "the manifest's range {}..={} is not the records' {first}..={last}",
                m.first_position, m.last_position
            ),
        ),
        (m.records_sha256 != sha, format!("the records' SHA-256 is {sha}, not the manifest's {}", m.records_sha256)),
    ];
    if let Some((_, why)) = problems.into_iter().find(|(bad, _)| *bad) {
        return Err(brk(mline, None, why));
    }
    Ok(m)
}

/// One row of a CSV file.
struct CsvRow {
    /// The line the row starts on.
    line: u64,
    fields: Vec<String>,
    /// The row's bytes with its line ending, for the records hash.
    raw: String,
}

/// The rows of an RFC 4180 file; an error names the line of the row.
fn parse_csv(text: &str) -> Result<Vec<CsvRow>, (u64, String)> {
    let mut rows = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut line = 1u64;
    while let Some(&(start, _)) = chars.peek() {
        let start_line = line;
        let (mut fields, mut cur, mut quoted, mut end) = (Vec::new(), String::new(), false, text.len());
        while let Some((i, c)) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek().is_some_and(|(_, n)| *n == '"') => {
                    chars.next();
                    cur.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => {
                    line += u64::from(c == '\n');
                    cur.push(c);
                }
                (false, '"') => quoted = true,
                (false, ',') => fields.push(std::mem::take(&mut cur)),
                (false, '\r') if chars.peek().is_some_and(|(_, n)| *n == '\n') => {}
                (false, '\n') => {
                    line += 1;
                    end = i + 1;
                    break;
                }
                (false, c) => cur.push(c),
            }
        }
        fields.push(cur);
        if quoted {
            return Err((start_line, "a quoted field is never closed".into()));
        }
        if fields.len() != CSV_COLUMNS.len() {
            return Err((start_line, format!("{} fields, not {}", fields.len(), CSV_COLUMNS.len())));
        }
        rows.push(CsvRow { line: start_line, fields, raw: text[start..end].to_owned() });
    }
    Ok(rows)
}
