//! Walking the log and checking every hash chain link and position.

use std::collections::HashMap;
use std::fmt;

use crate::chain::GENESIS_HASH;
use crate::store::{EventStore, StoreError, StoreResult};

/// What kind of break was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The stored hash does not match the event's stored bytes.
    HashMismatch,
    /// `prev_hash` does not match the previous event's hash.
    BrokenLink,
    /// Versions are missing from the stream (rows deleted).
    MissingVersions,
    /// A stream's versions do not increase with the global order (rows swapped or duplicated).
    OutOfOrder,
    /// Global positions are missing (rows deleted).
    MissingPositions,
    /// A row cannot be read at all.
    UnreadableRow,
}

/// One place where the log is not what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// What is wrong.
    pub kind: BreakKind,
    /// The stream, when known.
    pub stream_id: Option<String>,
    /// The first stream version affected, when known.
    pub stream_version: Option<u64>,
    /// The global position where it was found.
    pub global_position: u64,
    /// Details for a person.
    pub detail: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.stream_id, self.stream_version) {
            (Some(s), Some(v)) => {
                write!(f, "stream {s} version {v} (position {}): {}", self.global_position, self.detail)
            }
            _ => write!(f, "position {}: {}", self.global_position, self.detail),
        }
    }
}

/// The result of a verification walk.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Events read.
    pub events: u64,
    /// Distinct streams seen.
    pub streams: u64,
    /// Highest position read.
    pub head_position: u64,
    /// Every break found, in log order (at most [`MAX_BREAKS`]).
    pub breaks: Vec<ChainBreak>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn is_intact(&self) -> bool {
        self.breaks.is_empty()
    }

    /// The first break in log order.
    pub fn first_break(&self) -> Option<&ChainBreak> {
        self.breaks.first()
    }
}

/// The most breaks one walk collects before it stops listing them.
pub const MAX_BREAKS: usize = 100;
const PAGE: usize = 2_000;

struct StreamState {
    version: u64,
    hash: String,
    position: u64,
}

/// A stream's version gap: versions missing between two present events.
struct VersionGap {
    stream_id: String,
    first_missing: u64,
    after_position: u64,
    before_position: u64,
}

/// Checks the whole log: every stream's versions are 1, 2, 3, … in global
/// order, every `prev_hash` links to the previous hash, every hash matches
/// the stored bytes, and global positions have no gaps.
pub async fn verify(store: &dyn EventStore) -> StoreResult<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut streams: HashMap<String, StreamState> = HashMap::new();
    let mut gaps: Vec<VersionGap> = Vec::new();
    let mut next_position = 1u64;
    let mut push = |report: &mut VerifyReport, b: ChainBreak| {
        if report.breaks.len() < MAX_BREAKS {
            report.breaks.push(b);
        }
    };
    loop {
        let page = match store.read_all(next_position, PAGE).await {
            Ok(p) => p,
            Err(StoreError::CorruptRow { position, message }) if position >= next_position => {
                push(
                    &mut report,
                    ChainBreak {
                        kind: BreakKind::UnreadableRow,
                        stream_id: None,
                        stream_version: None,
                        global_position: position,
                        detail: format!("row cannot be read: {message}"),
                    },
                );
                // Read the rows before the bad one, then skip it.
                let before =
                    store.read_all(next_position, (position - next_position) as usize).await.unwrap_or_default();
                check_page(&before, &mut streams, &mut gaps, &mut next_position, &mut report, &mut push);
                next_position = position + 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if page.is_empty() {
            break;
        }
        check_page(&page, &mut streams, &mut gaps, &mut next_position, &mut report, &mut push);
    }
    report.streams = streams.len() as u64;
    // Name the stream behind a position gap when a stream's version gap
    // spans it: a deleted row then reads "stream S version V" too.
    for b in report.breaks.iter_mut().filter(|b| b.kind == BreakKind::MissingPositions) {
        if let Some(g) =
            gaps.iter().find(|g| g.after_position < b.global_position && g.before_position > b.global_position)
        {
            b.stream_id = Some(g.stream_id.clone());
            b.stream_version = Some(g.first_missing);
        }
    }
    report.breaks.sort_by_key(|b| b.global_position);
    Ok(report)
}

fn check_page(
    page: &[crate::RecordedEvent],
    streams: &mut HashMap<String, StreamState>,
    gaps: &mut Vec<VersionGap>,
    next_position: &mut u64,
    report: &mut VerifyReport,
    push: &mut impl FnMut(&mut VerifyReport, ChainBreak),
) {
    for e in page {
        if e.global_position > *next_position {
            push(
                report,
                ChainBreak {
                    kind: BreakKind::MissingPositions,
                    stream_id: None,
                    stream_version: None,
                    global_position: *next_position,
                    detail: format!(
                        "global positions {}..={} are missing: events were deleted",
                        *next_position,
                        e.global_position - 1
                    ),
                },
            );
        }
        *next_position = e.global_position + 1;
        report.events += 1;
        report.head_position = e.global_position;

        let state = streams.entry(e.stream_id.clone()).or_insert_with(|| StreamState {
            version: 0,
            hash: GENESIS_HASH.to_owned(),
            position: 0,
        });
        let brk = |kind, version, detail: String| ChainBreak {
            kind,
            stream_id: Some(e.stream_id.clone()),
            stream_version: Some(version),
            global_position: e.global_position,
            detail,
        };
        let contiguous = e.stream_version == state.version + 1;
        if e.stream_version <= state.version {
            push(
                report,
                brk(
                    BreakKind::OutOfOrder,
                    e.stream_version,
                    format!(
                        "version {} comes after version {} in the global order: events were reordered or duplicated",
                        e.stream_version, state.version
                    ),
                ),
            );
        } else if !contiguous {
            gaps.push(VersionGap {
                stream_id: e.stream_id.clone(),
                first_missing: state.version + 1,
                after_position: state.position,
                before_position: e.global_position,
            });
            push(
                report,
                brk(
                    BreakKind::MissingVersions,
                    state.version + 1,
                    format!(
                        "versions {}..={} are missing (next present: {}): events were deleted",
                        state.version + 1,
                        e.stream_version - 1,
                        e.stream_version
                    ),
                ),
            );
        } else if e.prev_hash != state.hash {
            push(
                report,
                brk(
                    BreakKind::BrokenLink,
                    e.stream_version,
                    format!(
                        "prev_hash {} does not match the hash {} of version {}: an earlier event was changed",
                        e.prev_hash, state.hash, state.version
                    ),
                ),
            );
        }
        let computed = e.computed_hash();
        if computed != e.hash {
            push(
                report,
                brk(
                    BreakKind::HashMismatch,
                    e.stream_version,
                    format!(
                        "stored hash {} does not match the stored event, which hashes to {computed}: the event was changed",
                        e.hash
                    ),
                ),
            );
        }
        if e.stream_version > state.version {
            state.version = e.stream_version;
            state.hash = e.hash.clone();
            state.position = e.global_position;
        }
    }
}
