//! The run scan: which top-level runs a workflow has and how each stands,
//! read from the log alone (for bulk resume and replay over recorded runs,
//! and for finding unfinished runs at start-up).

use std::collections::BTreeMap;

use cairn_events::Event;
use chrono::Utc;
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use cairn_events::EventStore;

use crate::error::RunError;

/// A top-level run of a workflow, as the log has it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunSummary {
    /// The run.
    pub run_id: Uuid,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Top-level runs (of one workflow, started since), oldest first, with
/// their status now, from a scan of the log: it answers from the events
/// alone (bulk resume and replay over recorded runs, unfinished runs).
pub async fn top_level_runs(
    store: &dyn EventStore,
    workflow: Option<&str>,
    since: Option<chrono::DateTime<Utc>>,
) -> Result<Vec<RunSummary>, RunError> {
    let mut runs: Vec<RunSummary> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 2000).await?;
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        for e in &page {
            let status = match e.event_type.as_str() {
                // Child runs (with a `parent`) are driven and resumed
                // through their parents: skipped below.
                "RunStarted" => {
                    let Event::RunStarted(r) = Event::decode(e)? else { continue };
                    let at = chrono::DateTime::parse_from_rfc3339(&e.recorded_at).map(|d| d.with_timezone(&Utc));
                    if workflow.is_some_and(|w| w != r.workflow)
                        || r.parent.is_some()
                        || since.is_some_and(|s| at.is_ok_and(|a| a < s))
                    {
                        continue;
                    }
                    index.insert(e.stream_id.clone(), runs.len());
                    runs.push(RunSummary {
                        run_id: r.run_id,
                        status: "running".into(),
                        started_at: e.recorded_at.clone(),
                    });
                    continue;
                }
                "RunCompleted" => "completed",
                "RunFailed" => "failed",
                "RunCancelled" => "cancelled",
                "RunResumed" => "running",
                _ => continue,
            };
            if let Some(&i) = index.get(&e.stream_id) {
                runs[i].status = status.to_owned();
            }
        }
    }
    Ok(runs)
}
