//! Schedules on a clock the test moves (issue 21 point 1): firings at each
//! nominal time across daylight-saving changes in a named zone, every
//! overlap policy, catch-up after a gap, pause and resume, jitter, backfill,
//! and one run per firing with three workers firing at once. Each on SQLite
//! and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_events::clock::{Clock, ManualClock};
use cairn_events::{Event, EventStore};
use cairn_runtime::{Engine, RunError, ScheduleRequest, TaskRegistry};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

/// A run that stays running (it waits for an approval) until cancelled.
const HELD: &str = "name: held\ninputs: { type: object, properties: { n: { type: integer } } }\nsteps:\n  - id: ok\n    approval: { approvers: [boss] }\n";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("time")
}

fn engine(store: &Arc<dyn EventStore>, clock: &Arc<ManualClock>) -> Engine {
    Engine::new(store.clone(), TaskRegistry::builtin()).with_clock(clock.clone())
}

fn request(name: &str, cron: &str, tz: &str, overlap: &str) -> ScheduleRequest {
    ScheduleRequest {
        name: name.into(),
        workflow: "held".into(),
        workflow_version: None,
        cron: cron.into(),
        timezone: tz.into(),
        inputs: json!({ "n": 1 }),
        overlap: overlap.into(),
        catchup_window: Duration::from_secs(600),
        jitter: Duration::ZERO,
    }
}

/// The schedule's stream, decoded.
async fn stream(store: &Arc<dyn EventStore>, name: &str) -> Vec<Event> {
    store
        .read_stream(&cairn_events::schedule_stream(name), 1)
        .await
        .expect("read")
        .iter()
        .map(|e| Event::decode(e).expect("decode"))
        .collect()
}

fn fired(events: &[Event]) -> Vec<(DateTime<Utc>, Uuid)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ScheduleFired(f) => Some((f.nominal_at, f.run_id)),
            _ => None,
        })
        .collect()
}

fn skipped(events: &[Event]) -> Vec<(DateTime<Utc>, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ScheduleSkipped(k) => Some((k.nominal_at, k.reason.clone())),
            _ => None,
        })
        .collect()
}

/// Ticks at each due time the schedule names until `until`, as a worker
/// woken by the wake-up index would.
async fn tick_through(e: &Engine, clock: &ManualClock, name: &str, until: DateTime<Utc>) {
    let mut next = e.tick_schedule(name).await.expect("tick");
    while let Some(t) = next {
        if t > until {
            break;
        }
        clock.set(t);
        next = e.tick_schedule(name).await.expect("tick");
    }
}

/// Across both of 2026's changes in New York: 02:30 does not exist on 8
/// March (it fires at 03:00 EDT, the first moment after the gap) and 01:30
/// happens twice on 1 November (it fires once, at the first). Each run's
/// `RunStarted` names the schedule and the nominal time.
async fn fires_at_each_nominal_time_across_daylight_saving(store: Arc<dyn EventStore>) {
    let clock = ManualClock::new(at("2026-03-06T17:00:00Z"));
    let e = engine(&store, &clock);
    common::publish(&e, HELD).await;
    e.define_schedule(request("spring", "30 2 * * *", "America/New_York", "allow_all"), "ops").await.expect("define");
    tick_through(&e, &clock, "spring", at("2026-03-10T12:00:00Z")).await;
    let got: Vec<_> = fired(&stream(&store, "spring").await).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        got,
        [
            at("2026-03-07T07:30:00Z"), // 02:30 EST
            at("2026-03-08T07:00:00Z"), // 02:30 does not exist: 03:00 EDT
            at("2026-03-09T06:30:00Z"), // 02:30 EDT
            at("2026-03-10T06:30:00Z"),
        ]
    );

    clock.set(at("2026-10-30T12:00:00Z"));
    e.define_schedule(request("fall", "30 1 * * *", "America/New_York", "allow_all"), "ops").await.expect("define");
    tick_through(&e, &clock, "fall", at("2026-11-02T12:00:00Z")).await;
    let got = fired(&stream(&store, "fall").await);
    let times: Vec<_> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [
            at("2026-10-31T05:30:00Z"), // 01:30 EDT
            at("2026-11-01T05:30:00Z"), // the first 01:30 (EDT), not the second (EST)
            at("2026-11-02T06:30:00Z"), // 01:30 EST
        ]
    );
    let first = common::events(&store, got[1].1).await;
    let Some(Event::RunStarted(r)) = first.first() else { panic!("{first:?}") };
    let origin = r.schedule.clone().expect("the run names its schedule");
    assert_eq!((origin.name.as_str(), origin.nominal_at), ("fall", at("2026-11-01T05:30:00Z")));
    assert_eq!(r.started_by, "schedule:fall");
    assert_eq!(r.inputs, json!({ "n": 1 }));
}

/// Each overlap policy, with a run that stays running until cancelled.
async fn each_overlap_policy(store: Arc<dyn EventStore>) {
    let t0 = at("2026-05-04T10:00:30Z");
    let minute = |m: i64| at("2026-05-04T10:00:00Z") + chrono::Duration::minutes(m);
    for policy in ["skip", "buffer_one", "allow_all", "cancel_other"] {
        let clock = ManualClock::new(t0);
        let e = engine(&store, &clock);
        if e.latest_version("held").await.expect("v").is_none() {
            common::publish(&e, HELD).await;
        }
        let name = format!("every-minute-{policy}");
        e.define_schedule(request(&name, "* * * * *", "UTC", policy), "ops").await.expect("define");
        for m in 1..=3 {
            clock.set(minute(m));
            e.tick_schedule(&name).await.expect("tick");
        }
        let ev = stream(&store, &name).await;
        let f = fired(&ev);
        let status = |id: Uuid| {
            let e = &e;
            async move { format!("{:?}", e.state(id).await.expect("state").status) }
        };
        match policy {
            "skip" => {
                assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [minute(1)]);
                assert_eq!(skipped(&ev), [(minute(2), "overlap".into()), (minute(3), "overlap".into())]);
                // Once it ends, the next firing is made.
                e.cancel(f[0].1, "ops", None).await.expect("cancel");
                clock.set(minute(4));
                e.tick_schedule(&name).await.expect("tick");
                assert_eq!(fired(&stream(&store, &name).await).last().map(|x| x.0), Some(minute(4)));
            }
            "buffer_one" => {
                assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [minute(1)]);
                assert_eq!(skipped(&ev), [(minute(2), "buffered".into()), (minute(3), "overlap".into())]);
                // The running one ends: the buffered firing is made at once
                // (the end woke the schedule), for its own nominal time.
                clock.set(minute(3) + chrono::Duration::seconds(20));
                e.cancel(f[0].1, "ops", None).await.expect("cancel");
                let due = store.claim_due("probe", clock.now().timestamp_millis(), 0, 100).await.expect("due");
                assert!(due.iter().any(|(s, _, _)| s == &cairn_events::schedule_stream(&name)), "woken: {due:?}");
                e.tick_schedule(&name).await.expect("tick");
                let f = fired(&stream(&store, &name).await);
                assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [minute(1), minute(2)]);
                assert_eq!(status(f[1].1).await, "Running");
            }
            "allow_all" => {
                assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [minute(1), minute(2), minute(3)]);
                for (_, id) in &f {
                    assert_eq!(status(*id).await, "Running");
                }
            }
            "cancel_other" => {
                assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [minute(1), minute(2), minute(3)]);
                assert_eq!(status(f[0].1).await, "Cancelled");
                assert_eq!(status(f[1].1).await, "Cancelled");
                assert_eq!(status(f[2].1).await, "Running");
            }
            _ => unreachable!(),
        }
    }
}

/// After a gap (every worker down for 30 minutes), the firings within the
/// catch-up window are made; the older ones are one `missed` record.
async fn catches_up_within_the_window_after_a_gap(store: Arc<dyn EventStore>) {
    let clock = ManualClock::new(at("2026-05-04T10:00:30Z"));
    let e = engine(&store, &clock);
    common::publish(&e, HELD).await;
    let mut r = request("gap", "*/5 * * * *", "UTC", "allow_all");
    r.catchup_window = Duration::from_secs(12 * 60);
    e.define_schedule(r, "ops").await.expect("define");
    clock.set(at("2026-05-04T10:31:00Z"));
    e.tick_schedule("gap").await.expect("tick");
    let ev = stream(&store, "gap").await;
    let missed: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::ScheduleSkipped(k) if k.reason == "missed" => Some((k.nominal_at, k.until)),
            _ => None,
        })
        .collect();
    assert_eq!(missed, [(at("2026-05-04T10:05:00Z"), Some(at("2026-05-04T10:15:00Z")))]);
    let times: Vec<_> = fired(&ev).into_iter().map(|(t, _)| t).collect();
    assert_eq!(times, [at("2026-05-04T10:20:00Z"), at("2026-05-04T10:25:00Z"), at("2026-05-04T10:30:00Z")]);
    // Its next due time is the next nominal one.
    assert_eq!(e.tick_schedule("gap").await.expect("tick"), Some(at("2026-05-04T10:35:00Z")));
}

/// Paused, it fires nothing; resumed, it goes on from then without
/// catching up the pause; jitter delays a firing by the same amount on
/// every worker, within its bound.
async fn pause_resume_and_jitter(store: Arc<dyn EventStore>) {
    let clock = ManualClock::new(at("2026-05-04T10:00:30Z"));
    let e = engine(&store, &clock);
    common::publish(&e, HELD).await;
    let mut r = request("jittery", "* * * * *", "UTC", "allow_all");
    r.jitter = Duration::from_secs(20);
    let s = e.define_schedule(r, "ops").await.expect("define");
    let d = s.definition.clone().expect("definition").recorded;
    let due = cairn_runtime::schedule::due_at("jittery", &d, at("2026-05-04T10:01:00Z"));
    assert!(due >= at("2026-05-04T10:01:00Z") && due <= at("2026-05-04T10:01:20Z"), "{due}");
    // Before its jittered time, nothing; at it, the firing.
    clock.set(at("2026-05-04T10:01:00Z"));
    if due > clock.now() {
        assert_eq!(e.tick_schedule("jittery").await.expect("tick"), Some(due));
        assert!(fired(&stream(&store, "jittery").await).is_empty());
    }
    clock.set(due);
    e.tick_schedule("jittery").await.expect("tick");
    assert_eq!(fired(&stream(&store, "jittery").await).len(), 1);

    e.pause_schedule("jittery", "ops", Some("maintenance".into())).await.expect("pause");
    clock.set(at("2026-05-04T10:10:30Z"));
    assert_eq!(e.tick_schedule("jittery").await.expect("tick"), None);
    assert_eq!(fired(&stream(&store, "jittery").await).len(), 1, "paused: nothing fired");
    e.resume_schedule("jittery", "ops").await.expect("resume");
    clock.set(at("2026-05-04T10:11:30Z"));
    e.tick_schedule("jittery").await.expect("tick");
    let times: Vec<_> = fired(&stream(&store, "jittery").await).into_iter().map(|(t, _)| t).collect();
    assert_eq!(times, [at("2026-05-04T10:01:00Z"), at("2026-05-04T10:11:00Z")], "the pause is not caught up");
}

/// A backfill starts one run per past time in the range; repeated, it
/// starts nothing new; a range past now or reversed is refused; a bad
/// expression, zone, policy, workflow or input is refused with what to do.
async fn backfill_and_refusals(store: Arc<dyn EventStore>) {
    let clock = ManualClock::new(at("2026-05-04T12:00:00Z"));
    let e = engine(&store, &clock);
    common::publish(&e, HELD).await;
    e.define_schedule(request("hourly", "0 * * * *", "Europe/Stockholm", "skip"), "ops").await.expect("define");
    let got = e.backfill_schedule("hourly", at("2026-05-04T06:00:00Z"), at("2026-05-04T09:00:00Z"), "ops").await;
    let got = got.expect("backfill");
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|(_, _, new)| *new));
    let again = e.backfill_schedule("hourly", at("2026-05-04T06:00:00Z"), at("2026-05-04T09:00:00Z"), "ops").await;
    assert!(again.expect("again").iter().all(|(_, _, new)| !*new), "a repeated backfill starts nothing");
    let f: Vec<_> = stream(&store, "hourly")
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::ScheduleFired(f) if f.backfill))
        .collect();
    assert_eq!(f.len(), 4);
    let refused = |r: Result<Vec<(DateTime<Utc>, Uuid, bool)>, RunError>| match r {
        Err(e) => (e.code(), e.to_string()),
        Ok(v) => panic!("accepted: {v:?}"),
    };
    let (code, msg) =
        refused(e.backfill_schedule("hourly", at("2026-05-04T09:00:00Z"), at("2026-05-04T06:00:00Z"), "ops").await);
    assert!(code == "out-of-range" && msg.contains("swap"), "{msg}");
    let (code, _) =
        refused(e.backfill_schedule("hourly", at("2026-05-04T09:00:00Z"), at("2026-05-05T06:00:00Z"), "ops").await);
    assert_eq!(code, "out-of-range");

    for (r, code, says) in [
        (request("bad", "61 * * * *", "UTC", "skip"), "invalid-schedule", "cron `61 * * * *`"),
        (request("bad", "0 * * * *", "Mars/Olympus", "skip"), "invalid-schedule", "IANA"),
        (request("bad", "0 * * * *", "UTC", "sometimes"), "invalid-schedule", "skip, buffer_one"),
        (request("bad", "0 0 31 2 *", "UTC", "skip"), "invalid-schedule", "no time"),
        (request("bad name", "0 * * * *", "UTC", "skip"), "invalid-schedule", "letters, digits"),
        (
            ScheduleRequest { workflow: "nope".into(), ..request("bad", "0 * * * *", "UTC", "skip") },
            "invalid-schedule",
            "publish it first",
        ),
        (
            ScheduleRequest { inputs: json!({ "n": "x" }), ..request("bad", "0 * * * *", "UTC", "skip") },
            "invalid-inputs",
            "n",
        ),
    ] {
        match e.define_schedule(r, "ops").await {
            Err(err) => {
                assert_eq!(err.code(), code, "{err}");
                assert!(err.to_string().contains(says), "{err}");
            }
            Ok(_) => panic!("accepted a bad schedule ({says})"),
        }
    }
    assert!(e.schedule("bad").await.expect("read").is_none(), "nothing recorded for a refused definition");
    match e.pause_schedule("nope", "ops", None).await {
        Err(err) => assert_eq!(err.code(), "unknown-schedule"),
        Ok(_) => panic!("paused an unknown schedule"),
    }
    e.delete_schedule("hourly", "ops").await.expect("delete");
    clock.set(at("2026-05-04T15:00:00Z"));
    assert_eq!(e.tick_schedule("hourly").await.expect("tick"), None);
    match e.pause_schedule("hourly", "ops", None).await {
        Err(err) => assert_eq!(err.code(), "schedule-deleted"),
        Ok(_) => panic!("paused a deleted schedule"),
    }
}

/// Three workers wake the schedule at each of ten nominal times at once:
/// each time has one run and one firing.
async fn three_workers_fire_once(store: Arc<dyn EventStore>) {
    let clock = ManualClock::new(at("2026-05-04T10:00:00.500Z"));
    let workers: Vec<Engine> =
        (0..3).map(|i| engine(&store, &clock).with_worker(format!("w{i}"), Duration::from_secs(30))).collect();
    common::publish(&workers[0], HELD).await;
    workers[0].define_schedule(request("busy", "* * * * * *", "UTC", "allow_all"), "ops").await.expect("define");
    for s in 1..=10 {
        clock.set(at("2026-05-04T10:00:00Z") + chrono::Duration::seconds(s));
        let (a, b, c) = tokio::join!(
            workers[0].tick_schedule("busy"),
            workers[1].tick_schedule("busy"),
            workers[2].tick_schedule("busy")
        );
        for r in [a, b, c] {
            r.expect("tick");
        }
    }
    let f = fired(&stream(&store, "busy").await);
    let times: BTreeSet<_> = f.iter().map(|x| x.0).collect();
    assert_eq!((f.len(), times.len()), (10, 10), "one firing per second: {f:?}");
    for (_, id) in &f {
        let ev = common::events(&store, *id).await;
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::RunStarted(_))).count(), 1);
    }
}

both_backends!(
    fires_at_each_nominal_time_across_daylight_saving,
    each_overlap_policy,
    catches_up_within_the_window_after_a_gap,
    pause_resume_and_jitter,
    backfill_and_refusals,
    three_workers_fire_once,
);
