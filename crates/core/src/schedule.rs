//! Schedules, as pure functions: a cron expression read in a time zone
//! ([`Spec`]), a schedule's state folded from its stream ([`Schedule`],
//! [`evolve`]) and what a schedule does when a worker wakes it at `now`
//! ([`decide`]): the firings to make, the ones skipped and why, and when
//! it is next due. The runtime starts the runs and appends what this
//! returns; no clock, no I/O here, so every worker decides alike.
//!
//! Daylight saving is the expression's, read in its zone (croner): a time
//! that does not exist (02:30 on the night clocks go forward) fires at the
//! first moment after the gap; a time that happens twice (the night they go
//! back) fires once, at its first occurrence.

use std::collections::BTreeSet;
use std::str::FromStr;

use cairn_events::{Event, ScheduleDefined, ScheduleFired, ScheduleSkipped};
use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

/// Most firings one wake-up makes or skips one by one (a catch-up of more
/// goes on at the next wake-up, due at once).
pub const MAX_FIRINGS_PER_TICK: usize = 100;

/// Most firings a backfill makes.
pub const MAX_BACKFILL: usize = 1000;

/// What a firing does while an earlier run of its schedule is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Fires nothing (recorded as skipped): the default.
    Skip,
    /// Fires once the running one ends (one firing kept; more are skipped).
    BufferOne,
    /// Fires anyway: runs overlap.
    AllowAll,
    /// Cancels the running ones, then fires.
    CancelOther,
}

impl Overlap {
    /// Every policy's name.
    pub const NAMES: [&'static str; 4] = ["skip", "buffer_one", "allow_all", "cancel_other"];

    /// The policy named `s`.
    pub fn parse(s: &str) -> Result<Overlap, String> {
        match s {
            "skip" => Ok(Overlap::Skip),
            "buffer_one" => Ok(Overlap::BufferOne),
            "allow_all" => Ok(Overlap::AllowAll),
            "cancel_other" => Ok(Overlap::CancelOther),
            other => Err(format!("overlap `{other}` is not one of {}", Overlap::NAMES.join(", "))),
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::AllowAll => "allow_all",
            Overlap::CancelOther => "cancel_other",
        }
    }
}

/// A cron expression read in a time zone.
#[derive(Debug, Clone)]
pub struct Spec {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Spec {
    /// Parses `cron` (5 fields, or 6 with seconds first; `MON`, `JAN`,
    /// `L`, `#`, `W`; `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`) in `timezone` (an IANA name such as `Europe/Stockholm`,
    /// or `UTC`). The error says what is wrong and how to write it.
    pub fn parse(cron: &str, timezone: &str) -> Result<Spec, String> {
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(cron.trim())
            .map_err(|e| {
                format!(
                    "cron `{cron}`: {e}; write 5 fields (minute hour day-of-month month day-of-week, as `30 2 * * MON-FRI`) \
                     or 6 with seconds first (`*/10 * * * * *`), or `@daily`"
                )
            })?;
        let tz = chrono_tz::Tz::from_str(timezone.trim()).map_err(|_| {
            format!("time zone `{timezone}` is not an IANA zone name; write one such as `UTC`, `Europe/Stockholm` or `America/New_York`")
        })?;
        // An expression that never fires (31 February) is refused now, not
        // found out at the first wake-up.
        let s = Spec { cron: parsed, tz };
        if s.next_after(Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single().unwrap_or_default()).is_none() {
            return Err(format!("cron `{cron}` names no time that exists"));
        }
        Ok(s)
    }

    /// The first time the expression names after `t` (strictly).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The last time the expression names before `t` (strictly).
    pub fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron.find_previous_occurrence(&local, false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The times the expression names in `(after, until]`, at most `limit`.
    pub fn between(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// A schedule's definition, checked.
#[derive(Debug, Clone)]
pub struct Definition {
    /// As recorded.
    pub recorded: ScheduleDefined,
    /// Its expression.
    pub spec: Spec,
    /// Its overlap policy.
    pub overlap: Overlap,
}

impl Definition {
    /// Checks a recorded (or proposed) definition.
    pub fn check(d: ScheduleDefined) -> Result<Definition, String> {
        let spec = Spec::parse(&d.cron, &d.timezone)?;
        let overlap = Overlap::parse(&d.overlap)?;
        Ok(Definition { recorded: d, spec, overlap })
    }
}

/// A schedule as its stream has it.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// Its definition (none before the first `ScheduleDefined`).
    pub definition: Option<Definition>,
    /// Paused: by whom, why.
    pub paused: Option<(String, Option<String>)>,
    /// Deleted.
    pub deleted: bool,
    /// The latest nominal time handled (fired or skipped), or when it was
    /// defined or resumed: firings after it are still to be made.
    pub cursor: Option<DateTime<Utc>>,
    /// Runs it started not yet seen ended.
    pub active: BTreeSet<Uuid>,
    /// A firing put off until the running run ends (`buffer_one`).
    pub buffered: Option<DateTime<Utc>>,
    /// The last firing: nominal time and run.
    pub last_fired: Option<(DateTime<Utc>, Uuid)>,
    /// Firings made, in all.
    pub fired: u64,
    /// Firings skipped, in all (a range of missed ones counts once).
    pub skipped: u64,
    /// The stream's version.
    pub version: u64,
}

/// Folds one event of a schedule's stream.
pub fn evolve(mut s: Schedule, e: &Event) -> Schedule {
    s.version += 1;
    match e {
        Event::ScheduleDefined(d) => {
            s.name = d.name.clone();
            let at = d.defined_at;
            // A definition that no longer parses (recorded by a newer
            // build) is kept out: the schedule then fires nothing.
            s.definition = Definition::check(d.clone()).ok();
            s.deleted = false;
            // A redefinition moves on from now: nothing before it is caught up.
            s.cursor = Some(s.cursor.map_or(at, |c| c.max(at)));
        }
        Event::SchedulePaused(p) => s.paused = Some((p.by.clone(), p.reason.clone())),
        Event::ScheduleResumed(r) => {
            s.paused = None;
            s.cursor = Some(s.cursor.map_or(r.at, |c| c.max(r.at)));
            s.buffered = None;
        }
        Event::ScheduleDeleted(_) => s.deleted = true,
        Event::ScheduleFired(f) => {
            for r in f.ended.iter().chain(&f.cancelled) {
                s.active.remove(r);
            }
            s.active.insert(f.run_id);
            if !f.backfill {
                s.cursor = Some(s.cursor.map_or(f.nominal_at, |c| c.max(f.nominal_at)));
                if s.buffered == Some(f.nominal_at) {
                    s.buffered = None;
                }
            }
            s.fired += 1;
            if s.last_fired.is_none_or(|(t, _)| t <= f.nominal_at) {
                s.last_fired = Some((f.nominal_at, f.run_id));
            }
        }
        Event::ScheduleSkipped(k) => {
            for r in &k.ended {
                s.active.remove(r);
            }
            let last = k.until.unwrap_or(k.nominal_at);
            s.cursor = Some(s.cursor.map_or(last, |c| c.max(last)));
            if k.reason == "buffered" {
                s.buffered = Some(k.nominal_at);
            } else {
                s.skipped += 1;
            }
        }
        _ => {}
    }
    s
}

/// The id of the run a schedule starts for a nominal time: the same for
/// every worker, so two that fire together start one run.
pub fn run_id(name: &str, nominal_at: DateTime<Utc>) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cairn-schedule\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(nominal_at.timestamp_millis().to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// The delay added to a firing: up to `jitter_ms`, derived from the
/// schedule and the nominal time (every worker computes the same).
pub fn jitter(name: &str, nominal_at: DateTime<Utc>, jitter_ms: u64) -> Duration {
    if jitter_ms == 0 {
        return Duration::zero();
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cairn-jitter\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(nominal_at.timestamp_millis().to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let ms = u64::from_be_bytes(b) % (jitter_ms + 1);
    Duration::milliseconds(i64::try_from(ms).unwrap_or(0))
}

/// When a nominal time is due: with its jitter.
pub fn due_at(name: &str, d: &ScheduleDefined, nominal_at: DateTime<Utc>) -> DateTime<Utc> {
    nominal_at + jitter(name, nominal_at, d.jitter_ms)
}

/// What a wake-up of a schedule does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// The events to append, in order: `ScheduleFired` (whose runs the
    /// caller starts first, cancelling the runs it names) and
    /// `ScheduleSkipped`.
    pub events: Vec<Event>,
    /// When it is next due (none: paused, deleted, or waiting for the
    /// running run to end with nothing else due).
    pub next_due: Option<DateTime<Utc>>,
}

/// What schedule `s` does at `now`, given which of its active runs are
/// still running.
pub fn decide(s: &Schedule, now: DateTime<Utc>, running: &BTreeSet<Uuid>) -> Tick {
    let Some(def) = &s.definition else { return Tick::default() };
    if s.deleted || s.paused.is_some() {
        return Tick::default();
    }
    let d = &def.recorded;
    let mut acc = Acc {
        name: &s.name,
        events: Vec::new(),
        ended: s.active.iter().filter(|r| !running.contains(r)).copied().collect(),
        running: s.active.iter().filter(|r| running.contains(r)).copied().collect(),
    };
    let mut buffered = s.buffered;
    // A firing put off, once nothing runs.
    if let Some(b) = buffered
        && acc.running.is_empty()
    {
        acc.fire(b, false);
        buffered = None;
    }
    let mut cursor = s.cursor.unwrap_or(d.defined_at);
    // Missed beyond the catch-up window: one record for the range.
    let window = now - Duration::milliseconds(i64::try_from(d.catchup_window_ms).unwrap_or(i64::MAX / 2));
    if let Some(first) = def.spec.next_after(cursor)
        && first < window
    {
        let last = def.spec.previous_before(window).filter(|l| *l >= first).unwrap_or(first);
        let until = (last != first).then_some(last);
        let why = format!(
            "older than the catch-up window ({} s) when a worker woke the schedule (was every worker down?)",
            d.catchup_window_ms / 1000
        );
        acc.skip(first, until, "missed", Some(why));
        cursor = last;
    }
    let mut handled = 0;
    let mut next_due = None;
    while let Some(t) = def.spec.next_after(cursor) {
        let due = due_at(&s.name, d, t);
        if due > now {
            next_due = Some(due);
            break;
        }
        if handled == MAX_FIRINGS_PER_TICK {
            next_due = Some(now);
            break;
        }
        handled += 1;
        match def.overlap {
            Overlap::AllowAll => acc.fire(t, false),
            Overlap::CancelOther => acc.fire(t, true),
            Overlap::Skip | Overlap::BufferOne if acc.running.is_empty() => acc.fire(t, false),
            Overlap::BufferOne if buffered.is_none() => {
                buffered = Some(t);
                acc.skip(t, None, "buffered", Some("put off until the running run ends".into()));
            }
            Overlap::Skip | Overlap::BufferOne => {
                let other = acc.running.iter().next().copied().unwrap_or_default();
                acc.skip(t, None, "overlap", Some(format!("run {other} of this schedule was still running")));
            }
        }
        cursor = t;
    }
    Tick { events: acc.events, next_due }
}

/// What a tick has decided so far.
struct Acc<'a> {
    name: &'a str,
    events: Vec<Event>,
    /// Runs seen ended, recorded with the first event.
    ended: Vec<Uuid>,
    running: BTreeSet<Uuid>,
}

impl Acc<'_> {
    fn fire(&mut self, nominal: DateTime<Utc>, cancel: bool) {
        let id = run_id(self.name, nominal);
        let cancelled = if cancel { std::mem::take(&mut self.running).into_iter().collect() } else { Vec::new() };
        self.events.push(Event::ScheduleFired(ScheduleFired {
            nominal_at: nominal,
            run_id: id,
            backfill: false,
            ended: std::mem::take(&mut self.ended),
            cancelled,
        }));
        self.running.insert(id);
    }

    fn skip(&mut self, t: DateTime<Utc>, until: Option<DateTime<Utc>>, reason: &str, message: Option<String>) {
        self.events.push(Event::ScheduleSkipped(ScheduleSkipped {
            nominal_at: t,
            until,
            reason: reason.into(),
            message,
            ended: std::mem::take(&mut self.ended),
        }));
    }
}

/// The next `n` firings of `s` after `now` (none while paused or deleted).
pub fn upcoming(s: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let Some(def) = &s.definition else { return Vec::new() };
    if s.deleted || s.paused.is_some() {
        return Vec::new();
    }
    let from = s.cursor.map_or(now, |c| c.max(now));
    let mut out = Vec::with_capacity(n);
    let mut t = from;
    while out.len() < n {
        match def.spec.next_after(t) {
            Some(x) => {
                out.push(x);
                t = x;
            }
            None => break,
        }
    }
    out
}
