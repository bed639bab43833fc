//! Quarantine of runs that crash the process. Start-up drives every
//! unfinished run; a run whose driving kills the process (memory, a bug)
//! would kill every start-up after it. So start-up puts the runs it drives
//! on probation, recorded in the `operations` stream (`RunsOnProbation`),
//! and marks them passed (`ProbationPassed`) once they settled or were
//! driven for [`PROBATION`]. A run still on probation when the next process
//! starts is a suspect: it is driven alone first, so a second death names
//! it, and a run the process died driving twice in a row is quarantined
//! (`RunQuarantined`): not driven again until an operator releases it
//! (`cairn quarantine release RUN`, `RunReleased`). Its own stream is never
//! touched; it stays `running` and can be cancelled.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{
    Event, EventStore, ExpectedVersion, Metadata, NewEvent, ProbationPassed, RunQuarantined, RunReleased,
    RunsOnProbation, StoreResult,
};
use uuid::Uuid;

/// Deaths in a row while driving a run that quarantine it.
pub const DEATHS: u32 = 2;

/// How long start-up drives a run before it has passed probation (if it has
/// not settled sooner).
pub const PROBATION: Duration = Duration::from_secs(5);

/// The stream these events go to.
pub const STREAM: &str = "operations";

/// Most runs one probation event names.
const CHUNK: usize = 10_000;

/// What the `operations` stream says about probation and quarantine.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Runs still on probation (the process that drove them died, or is
    /// still within the probation time), with the deaths counted so far.
    pub suspects: HashMap<Uuid, u32>,
    /// Quarantined runs, with why and when.
    pub quarantined: BTreeMap<Uuid, (RunQuarantined, String)>,
    /// The stream's version this was read at.
    pub version: u64,
}

impl Ledger {
    /// Reads the ledger from the log.
    pub async fn read(store: &Arc<dyn EventStore>) -> Result<Ledger, crate::RunError> {
        let mut l = Ledger::default();
        // Runs on probation whose `ProbationPassed` has not come yet.
        let mut open: HashMap<Uuid, u32> = HashMap::new();
        for r in store.read_stream(STREAM, 1).await? {
            l.version = r.stream_version;
            match Event::decode(&r)? {
                Event::RunsOnProbation(p) => {
                    for run in p.runs {
                        // Still open from an earlier start-up: that process died.
                        let deaths = open.get(&run).map_or(0, |d| d + 1);
                        open.insert(run, deaths);
                    }
                }
                Event::ProbationPassed(p) => {
                    for run in p.runs {
                        open.remove(&run);
                    }
                }
                Event::RunQuarantined(q) => {
                    open.remove(&q.run_id);
                    l.quarantined.insert(q.run_id, (q, r.recorded_at.clone()));
                }
                Event::RunReleased(x) => {
                    l.quarantined.remove(&x.run_id);
                }
                _ => {}
            }
        }
        // The last start-up to put a run on probation died too (or is
        // still within its probation time).
        l.suspects = open.into_iter().map(|(run, d)| (run, d + 1)).collect();
        Ok(l)
    }

    /// Whether `run` is quarantined.
    pub fn is_quarantined(&self, run: Uuid) -> bool {
        self.quarantined.contains_key(&run)
    }
}

/// Appends `event` to the `operations` stream.
pub async fn record(store: &Arc<dyn EventStore>, event: impl Into<Event>, by: &str) -> StoreResult<()> {
    let e: Event = event.into();
    store.append(STREAM, ExpectedVersion::Any, vec![NewEvent::from_event(&e, Metadata::by(by))]).await.map(|_| ())
}

/// Puts `runs` on probation (driven together, or each `alone`).
pub async fn on_probation(store: &Arc<dyn EventStore>, runs: &[Uuid], alone: bool) -> StoreResult<()> {
    for c in runs.chunks(CHUNK) {
        record(store, RunsOnProbation { runs: c.to_vec(), alone }, "cairn serve").await?;
    }
    Ok(())
}

/// Marks `runs` as having passed probation.
pub async fn passed(store: &Arc<dyn EventStore>, runs: &[Uuid]) -> StoreResult<()> {
    for c in runs.chunks(CHUNK) {
        record(store, ProbationPassed { runs: c.to_vec() }, "cairn serve").await?;
    }
    Ok(())
}

/// Quarantines `run`.
pub async fn quarantine(store: &Arc<dyn EventStore>, run: Uuid, deaths: u32) -> StoreResult<RunQuarantined> {
    let q = RunQuarantined {
        run_id: run,
        deaths,
        reason: format!(
            "the process died {deaths} times in a row within {} s of starting to drive this run; \
             it is not driven again until `cairn quarantine release {run}` (or cancel it)",
            PROBATION.as_secs()
        ),
    };
    record(store, q.clone(), "cairn serve").await?;
    Ok(q)
}

/// Releases `run` from quarantine.
pub async fn release(store: &Arc<dyn EventStore>, run: Uuid, by: &str, reason: Option<String>) -> StoreResult<()> {
    record(store, RunReleased { run_id: run, by: by.to_owned(), reason }, by).await
}
