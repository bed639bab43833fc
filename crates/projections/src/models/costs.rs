//! The `costs` read model: tokens and money by run, step, model, workflow and day.

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use super::{int_at, text_at};
use crate::db::{DbError, Tx, Val};
use crate::projection::{Input, Projection};

// ---- costs ------------------------------------------------------------------

/// Tokens and money by run, step, model, workflow and day.
pub struct Costs;

impl Projection for Costs {
    fn name(&self) -> &'static str {
        "costs"
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["costs", "cost_runs", "cost_attempts"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS costs{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, workflow TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, attempts BIGINT NOT NULL, input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cost_micros BIGINT NOT NULL, currency TEXT, PRIMARY KEY (run_id, step_id, model, day))"
            ),
            format!("CREATE TABLE IF NOT EXISTS cost_runs{s} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL)"),
            format!(
                "CREATE TABLE IF NOT EXISTS cost_attempts{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT NOT NULL, model TEXT NOT NULL, PRIMARY KEY (run_id, step_id, attempt))"
            ),
        ]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(t, "RunStarted" | "AiAttemptStarted" | "AiAttemptCompleted")
    }
}

impl Costs {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        // Runs first, in one statement per many (AI events of a run always
        // follow its start), then the rare AI events one by one.
        let starts: Vec<Vec<Val>> = events
            .iter()
            .filter_map(|(r, e)| match e {
                Event::RunStarted(s) => {
                    Some(vec![Val::opt_text(r.stream_id.strip_prefix("run-")), Val::from(s.workflow.as_str())])
                }
                _ => None,
            })
            .collect();
        crate::projection::write_rows(tx, &format!("cost_runs{suffix}"), &["run_id", "workflow"], None, starts).await?;
        for (recorded, event) in events.iter().filter(|(_, e)| !matches!(e, Event::RunStarted(_))) {
            costs_event(tx, Input { suffix, recorded, event }).await?;
        }
        Ok(())
    }
}

/// Applies one AI event (or run start) to the cost tables.
fn costs_event<'a>(tx: &'a mut Tx, i: Input<'a>) -> BoxFuture<'a, Result<(), DbError>> {
    Box::pin(async move {
        let (c, r, a) = (i.table("costs"), i.table("cost_runs"), i.table("cost_attempts"));
        let run = run_id(&i);
        match i.event {
            Event::RunStarted(e) => {
                tx.exec(
                    &format!("INSERT INTO {r} (run_id, workflow) VALUES ($1, $2)"),
                    &[run, Val::from(e.workflow.as_str())],
                )
                .await?;
            }
            Event::AiAttemptStarted(e) => {
                tx.exec(
                    &format!("INSERT INTO {a} (run_id, step_id, attempt, model) VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET model = excluded.model"),
                    &[run, Val::from(e.step_id.as_str()), Val::from(e.attempt), Val::from(format!("{}/{}", e.provider, e.model))],
                )
                .await?;
            }
            Event::AiAttemptCompleted(e) => {
                let model = tx
                    .row(
                        &format!("SELECT model FROM {a} WHERE run_id = $1 AND step_id = $2 AND attempt = $3"),
                        &[run.clone(), Val::from(e.step_id.as_str()), Val::from(e.attempt)],
                    )
                    .await?
                    .and_then(|r| r.first().and_then(|v| v.as_text().map(str::to_owned)))
                    .unwrap_or_else(|| "unknown".into());
                let workflow = tx
                    .row(&format!("SELECT workflow FROM {r} WHERE run_id = $1"), std::slice::from_ref(&run))
                    .await?
                    .and_then(|r| r.first().and_then(|v| v.as_text().map(str::to_owned)))
                    .unwrap_or_else(|| "unknown".into());
                let day: String = i.recorded.recorded_at.chars().take(10).collect();
                let cost = e.cost.as_ref().map_or(0, |c| i64::try_from(c.micros).unwrap_or(i64::MAX));
                tx.exec(
                    &format!("INSERT INTO {c} (run_id, step_id, workflow, model, day, attempts, input_tokens, output_tokens, cost_micros, currency) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9) ON CONFLICT (run_id, step_id, model, day) DO UPDATE SET attempts = {c}.attempts + 1, input_tokens = {c}.input_tokens + excluded.input_tokens, output_tokens = {c}.output_tokens + excluded.output_tokens, cost_micros = {c}.cost_micros + excluded.cost_micros, currency = COALESCE(excluded.currency, {c}.currency)"),
                    &[
                        run,
                        Val::from(e.step_id.as_str()),
                        Val::from(workflow),
                        Val::from(model),
                        Val::from(day),
                        Val::from(e.usage.input_tokens),
                        Val::from(e.usage.output_tokens),
                        Val::Int(cost),
                        Val::opt_text(e.cost.as_ref().map(|c| c.currency.clone())),
                    ],
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    })
}

fn run_id(i: &Input<'_>) -> Val {
    Val::opt_text(i.run_id())
}

/// Token and money totals of one group (`cairn costs`, `GET /costs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostTotal {
    /// The group: a run id, workflow, model or day.
    pub key: String,
    /// Model calls.
    pub attempts: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in millionths of the currency.
    pub cost_micros: i64,
    /// The currency, when a price was known.
    pub currency: Option<String>,
}

impl CostTotal {
    /// A total read back: key, attempts, input, output, cost, currency.
    pub(crate) fn from_vals(r: &[Val]) -> CostTotal {
        CostTotal {
            key: r.first().map(ToString::to_string).unwrap_or_default(),
            attempts: int_at(r, 1).unwrap_or_default(),
            input_tokens: int_at(r, 2).unwrap_or_default(),
            output_tokens: int_at(r, 3).unwrap_or_default(),
            cost_micros: int_at(r, 4).unwrap_or_default(),
            currency: text_at(r, 5),
        }
    }
}
