//! Schedules: runs started at the times a cron expression names, durably.
//! A schedule is a stream (`schedule-<name>`) of its definition, pauses,
//! firings and skips; its next due time is in the wake-up index, written in
//! the same transaction as its events, so whichever worker claims it when
//! due fires it (the others do not see it while the claim's lease is held),
//! and a run's id is derived from the schedule and the nominal time, so two
//! workers that both fire one time start one run. What to fire is decided
//! by the pure [`cairn_core::schedule::decide`]; this module starts the
//! runs, then records the firings.

use std::collections::BTreeSet;

use cairn_core::schedule::{self, Definition, Schedule};
use cairn_events::{
    Event, ExpectedVersion, Metadata, NewEvent, ScheduleDefined, ScheduleDeleted, ScheduleFired, ScheduleOrigin,
    SchedulePaused, ScheduleResumed, ScheduleSkipped, StreamAppend, Wake, schedule_stream,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::runner::Origin;
use crate::{Engine, RunError};

/// What defining a schedule asks for.
#[derive(Debug, Clone)]
pub struct ScheduleRequest {
    /// Its name: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The workflow each firing starts.
    pub workflow: String,
    /// A version to pin, or none for the latest at each firing.
    pub workflow_version: Option<u32>,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone (default `UTC`).
    pub timezone: String,
    /// Each run's inputs.
    pub inputs: Value,
    /// `skip` (default), `buffer_one`, `allow_all` or `cancel_other`.
    pub overlap: String,
    /// How far back missed firings are caught up after downtime.
    pub catchup_window: std::time::Duration,
    /// Most delay added to a firing.
    pub jitter: std::time::Duration,
}

fn invalid(message: impl Into<String>) -> RunError {
    RunError::Refused { code: "invalid-schedule", message: message.into() }
}

fn unknown(name: &str) -> RunError {
    RunError::Refused {
        code: "unknown-schedule",
        message: format!("no schedule named `{name}`; `cairn schedules list` lists them"),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Engine {
    /// A schedule as its stream has it (none if it was never defined).
    pub async fn schedule(&self, name: &str) -> Result<Option<Schedule>, RunError> {
        let events = self.store.read_stream(&schedule_stream(name), 1).await?;
        if events.is_empty() {
            return Ok(None);
        }
        let mut s = Schedule::default();
        for e in &events {
            s = schedule::evolve(s, &Event::decode(e)?);
        }
        Ok(Some(s))
    }

    async fn live_schedule(&self, name: &str) -> Result<Schedule, RunError> {
        let s = self.schedule(name).await?.ok_or_else(|| unknown(name))?;
        if s.deleted {
            return Err(RunError::Refused {
                code: "schedule-deleted",
                message: format!("schedule `{name}` was deleted; define it again to use the name"),
            });
        }
        Ok(s)
    }

    /// Defines a schedule, or redefines one (firings from now on follow
    /// the new definition; a deleted one comes back). Checks the
    /// expression, the zone, the policy, the workflow and the inputs first:
    /// nothing is recorded when any is wrong.
    pub async fn define_schedule(&self, r: ScheduleRequest, by: &str) -> Result<Schedule, RunError> {
        crate::error::check_name("schedule", &r.name, "invalid-schedule")?;
        let Some(latest) = self.latest_version(&r.workflow).await? else {
            return Err(invalid(format!(
                "no workflow named `{}` is published; publish it first (cairn workflows, POST /workflows)",
                r.workflow
            )));
        };
        let version = r.workflow_version.unwrap_or(latest);
        if version == 0 || version > latest {
            return Err(invalid(format!("workflow `{}` has versions 1 to {latest}, not {version}", r.workflow)));
        }
        // The inputs are checked now, against the version that would run.
        let w = self.definition(&r.workflow, version).await?;
        let inputs = w.inputs_with_defaults(&r.inputs);
        if let Some(schema) = &w.inputs_schema {
            let errors = cairn_core::contract::violations(schema, &inputs);
            if !errors.is_empty() {
                return Err(RunError::InvalidInputs { workflow: w.name.clone(), errors });
            }
        }
        let now = self.fx.clock.now();
        let d = ScheduleDefined {
            name: r.name.clone(),
            workflow: r.workflow.clone(),
            workflow_version: r.workflow_version,
            cron: r.cron.trim().to_owned(),
            timezone: if r.timezone.trim().is_empty() { "UTC".into() } else { r.timezone.trim().to_owned() },
            inputs: r.inputs.clone(),
            overlap: if r.overlap.is_empty() { "skip".into() } else { r.overlap.clone() },
            catchup_window_ms: millis(r.catchup_window),
            jitter_ms: millis(r.jitter),
            defined_at: now,
            by: by.to_owned(),
        };
        Definition::check(d.clone()).map_err(invalid)?;
        self.fx.config.limits.check_value("/inputs", &d.inputs).map_err(|l| RunError::Limit(Box::new(l)))?;
        let current = self.schedule(&r.name).await?;
        let version = current.as_ref().map_or(0, |s| s.version);
        let mut s = current.unwrap_or_default();
        let event = Event::ScheduleDefined(d);
        s = schedule::evolve(s, &event);
        let next = schedule::decide(&s, now, &BTreeSet::new()).next_due;
        self.append_schedule(&r.name, version, vec![event], next, by).await?;
        Ok(s)
    }

    /// Pauses a schedule: it fires nothing until resumed.
    pub async fn pause_schedule(&self, name: &str, by: &str, reason: Option<String>) -> Result<Schedule, RunError> {
        let s = self.live_schedule(name).await?;
        if s.paused.is_some() {
            return Ok(s);
        }
        let e = Event::SchedulePaused(SchedulePaused { by: by.to_owned(), reason });
        self.append_schedule(name, s.version, vec![e.clone()], None, by).await?;
        Ok(schedule::evolve(s, &e))
    }

    /// Resumes a paused schedule from now: the paused time is not caught up.
    pub async fn resume_schedule(&self, name: &str, by: &str) -> Result<Schedule, RunError> {
        let s = self.live_schedule(name).await?;
        if s.paused.is_none() {
            return Ok(s);
        }
        let now = self.fx.clock.now();
        let e = Event::ScheduleResumed(ScheduleResumed { by: by.to_owned(), at: now });
        let after = schedule::evolve(s.clone(), &e);
        let next = schedule::upcoming(&after, now, 1).first().map(|t| {
            let d = after.definition.as_ref().map(|d| d.recorded.clone());
            d.map_or(*t, |d| schedule::due_at(name, &d, *t))
        });
        self.append_schedule(name, s.version, vec![e], next, by).await?;
        Ok(after)
    }

    /// Deletes a schedule: it fires nothing more; its runs and stream stay.
    pub async fn delete_schedule(&self, name: &str, by: &str) -> Result<(), RunError> {
        let s = self.live_schedule(name).await?;
        let e = Event::ScheduleDeleted(ScheduleDeleted { by: by.to_owned() });
        self.append_schedule(name, s.version, vec![e], None, by).await
    }

    /// Starts a run for each time the schedule's expression names in
    /// `[from, to]` (at most [`schedule::MAX_BACKFILL`]), whatever runs
    /// already (backfills overlap), each recorded as a backfill firing. A
    /// time that already has its run is left as it is, so a backfill
    /// repeated starts nothing new. Returns each time with its run and
    /// whether this call started it.
    pub async fn backfill_schedule(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        by: &str,
    ) -> Result<Vec<(DateTime<Utc>, Uuid, bool)>, RunError> {
        let s = self.live_schedule(name).await?;
        let def = s.definition.clone().ok_or_else(|| unknown(name))?;
        if to < from {
            return Err(RunError::Refused {
                code: "out-of-range",
                message: format!("the range ends ({to}) before it starts ({from}); swap them"),
            });
        }
        let now = self.fx.clock.now();
        if to > now {
            return Err(RunError::Refused {
                code: "out-of-range",
                message: format!("a backfill covers past times; {to} is later than now ({now})"),
            });
        }
        let first = from - chrono::Duration::milliseconds(1);
        let times = def.spec.between(first, to, schedule::MAX_BACKFILL + 1);
        if times.len() > schedule::MAX_BACKFILL {
            return Err(RunError::Refused {
                code: "out-of-range",
                message: format!(
                    "the range names more than {} firings; backfill a shorter range at a time",
                    schedule::MAX_BACKFILL
                ),
            });
        }
        let mut out = Vec::with_capacity(times.len());
        for t in times {
            let id = schedule::run_id(name, t);
            let started = self.start_scheduled(&def.recorded, name, t, id).await?;
            if let Err(why) = &started {
                return Err(invalid(format!("the firing of {t} could not start: {why}")));
            }
            let new = matches!(started, Ok(true));
            if new {
                let e = Event::ScheduleFired(ScheduleFired {
                    nominal_at: t,
                    run_id: id,
                    backfill: true,
                    ended: Vec::new(),
                    cancelled: Vec::new(),
                });
                // Beside whatever the schedule records meanwhile.
                let stream = schedule_stream(name);
                let meta = Metadata::by(by);
                self.store.append(&stream, ExpectedVersion::Any, vec![NewEvent::from_event(&e, meta)]).await?;
            }
            out.push((t, id, new));
        }
        Ok(out)
    }

    /// Starts the run of one firing: `Ok(Ok(true))` started, `Ok(Ok(false))`
    /// it had started already, `Ok(Err(why))` it cannot start (the
    /// workflow archived or gone, inputs no longer valid).
    async fn start_scheduled(
        &self,
        d: &ScheduleDefined,
        name: &str,
        nominal_at: DateTime<Utc>,
        run_id: Uuid,
    ) -> Result<Result<bool, String>, RunError> {
        if self.store.stream_version(&cairn_events::run_stream(run_id)).await? > 0 {
            return Ok(Ok(false));
        }
        let version = match d.workflow_version {
            Some(v) => v,
            None => match self.latest_version(&d.workflow).await? {
                Some(v) => v,
                None => return Ok(Err(format!("workflow `{}` is not published", d.workflow))),
            },
        };
        if self.archived(&d.workflow).await? {
            return Ok(Err(format!("workflow `{}` is archived", d.workflow)));
        }
        let w = match self.definition(&d.workflow, version).await {
            Ok(w) => w,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let origin =
            Origin { schedule: Some(ScheduleOrigin { name: name.to_owned(), nominal_at }), ..Origin::default() };
        let by = format!("schedule:{name}");
        match self.start_run(&w, version, d.inputs.clone(), &by, run_id, origin, false).await {
            Ok(_) => Ok(Ok(true)),
            // Another worker started it first.
            Err(RunError::Store(e)) if e.is_conflict() => Ok(Ok(false)),
            Err(e @ (RunError::InvalidInputs { .. } | RunError::Limit(_) | RunError::Definition { .. })) => {
                Ok(Err(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// What a worker does when a schedule is due: decides (with which of its
    /// runs still run), starts the runs of the firings (cancelling those a
    /// `cancel_other` firing names), then records the firings and skips
    /// with the schedule's next due time. Returns that time.
    pub async fn tick_schedule(&self, name: &str) -> Result<Option<DateTime<Utc>>, RunError> {
        loop {
            let Some(s) = self.schedule(name).await? else {
                self.store.set_wake(&schedule_stream(name), None).await?;
                return Ok(None);
            };
            let now = self.fx.clock.now();
            let mut running = BTreeSet::new();
            for r in &s.active {
                match self.state(*r).await {
                    Ok(st) if !st.status.is_terminal() => {
                        running.insert(*r);
                    }
                    Ok(_) | Err(RunError::UnknownRun(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let tick = schedule::decide(&s, now, &running);
            let Some(def) = &s.definition else { return Ok(None) };
            let mut events = Vec::with_capacity(tick.events.len());
            for e in tick.events {
                match e {
                    Event::ScheduleFired(f) => {
                        for c in &f.cancelled {
                            let why = Some(format!("schedule `{name}` fired again (overlap cancel_other)"));
                            match self.cancel(*c, &format!("schedule:{name}"), why).await {
                                Ok(()) | Err(RunError::InvalidState { .. } | RunError::UnknownRun(_)) => {}
                                Err(e) => return Err(e),
                            }
                        }
                        match self.start_scheduled(&def.recorded, name, f.nominal_at, f.run_id).await? {
                            Ok(_) => events.push(Event::ScheduleFired(f)),
                            Err(why) => {
                                tracing::warn!(schedule = name, nominal_at = %f.nominal_at, reason = %why, "a firing could not start");
                                events.push(Event::ScheduleSkipped(ScheduleSkipped {
                                    nominal_at: f.nominal_at,
                                    until: None,
                                    reason: "refused".into(),
                                    message: Some(why),
                                    ended: f.ended,
                                }));
                            }
                        }
                    }
                    other => events.push(other),
                }
            }
            let by = format!("schedule:{name}");
            if events.is_empty() {
                self.store.set_wake(&schedule_stream(name), tick.next_due.map(|t| t.timestamp_millis())).await?;
                return Ok(tick.next_due);
            }
            let counted = events.clone();
            match self.append_schedule(name, s.version, events, tick.next_due, &by).await {
                Ok(()) => {
                    crate::metrics::schedule_recorded(name, &counted);
                    return Ok(tick.next_due);
                }
                // Changed meanwhile (paused, redefined, another worker):
                // decide again on what is recorded; the runs started are
                // found started.
                Err(RunError::Store(e)) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a workflow was archived (it takes no new runs).
    async fn archived(&self, workflow: &str) -> Result<bool, RunError> {
        let events = self.store.read_stream(&cairn_events::workflow_stream(workflow), 1).await?;
        Ok(events.iter().any(|e| e.event_type == "WorkflowArchived"))
    }

    /// Appends to a schedule's stream at `expected`, with its next due time
    /// in the wake-up index in the same transaction.
    async fn append_schedule(
        &self,
        name: &str,
        expected: u64,
        events: Vec<Event>,
        next_due: Option<DateTime<Utc>>,
        by: &str,
    ) -> Result<(), RunError> {
        let stream = schedule_stream(name);
        let new = events.iter().map(|e| NewEvent::from_event(e, Metadata::by(by))).collect();
        let expected = if expected == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(expected) };
        let append = StreamAppend { stream_id: stream.clone(), expected, events: new };
        let wake = Wake { stream_id: stream, due_ms: next_due.map(|t| t.timestamp_millis()) };
        self.store.append_guarded(vec![append], Vec::new(), vec![wake]).await?;
        Ok(())
    }
}
