//! The event store contract, run against SQLite and PostgreSQL alike.
#![allow(missing_docs)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cairn_events::{
    Event, ExpectedVersion, Fence, GENESIS_HASH, Metadata, NewEvent, RecordedEvent, StepStarted, StoreError,
    StoreErrorKind, StreamAppend, Wake,
};
use common::Harness;
use serde_json::json;

fn ev(n: u64) -> NewEvent {
    NewEvent::from_event(
        &Event::StepStarted(StepStarted {
            step_id: format!("s{n}"),
            attempt: 1,
            input: json!({ "n": n }),
            scope: String::new(),
            at: None,
        }),
        Metadata::by("tester"),
    )
}

fn evs(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(ev).collect()
}

async fn all_events(h: &Harness) -> Vec<RecordedEvent> {
    h.store().read_all(1, 1_000_000).await.expect("read_all")
}

/// One live worker holds a run; a worker that stopped beating is taken
/// over, its token superseded, and its late append refused with nothing
/// written; a retired worker's runs are free at once.
async fn a_lease_has_one_live_holder_and_fences_a_stale_one(h: Harness) {
    let store = h.store();
    let (now, timeout) = (1_000_000_i64, 10_000_i64);
    let one = |expected, events| vec![StreamAppend { stream_id: "run-a".into(), expected, events }];
    let fence = |w: &str, token| vec![Fence { stream_id: "run-a".into(), worker_id: w.into(), token }];
    store.beat("w1", "test", now).await.expect("beat");
    store.beat("w2", "test", now).await.expect("beat");
    let t1 = store.claim("run-a", "w1", now - timeout).await.expect("claim").expect("a free run is claimed");
    assert_eq!(store.claim("run-a", "w2", now - timeout).await.expect("claim"), None, "w1 is alive");
    assert_eq!(store.claim("run-a", "w1", now - timeout).await.expect("claim"), Some(t1), "its own: same token");
    assert_eq!(store.orphans("w2", now - timeout, 10).await.expect("orphans"), Vec::<String>::new());
    store
        .append_guarded(one(ExpectedVersion::NoStream, evs(1..2)), fence("w1", t1), vec![])
        .await
        .expect("w1 holds it");

    // w1 stops beating; w2 beats on, finds the run orphaned and takes it.
    let later = now + 2 * timeout;
    store.beat("w2", "test", later).await.expect("beat");
    assert_eq!(store.orphans("w2", later - timeout, 10).await.expect("orphans"), vec!["run-a".to_owned()]);
    let t2 = store.claim("run-a", "w2", later - timeout).await.expect("claim").expect("taken over");
    assert!(t2 > t1, "a takeover raises the token ({t1} → {t2})");
    let err = store
        .append_guarded(one(ExpectedVersion::Exact(1), evs(2..3)), fence("w1", t1), vec![])
        .await
        .expect_err("the stale owner's append is refused");
    assert_eq!(err.kind(), StoreErrorKind::Fenced, "{err}");
    assert!(err.to_string().contains("run-a"), "{err}");
    assert_eq!(store.stream_version("run-a").await.expect("version"), 1, "nothing was written");
    store
        .append_guarded(one(ExpectedVersion::Exact(1), evs(2..3)), fence("w2", t2), vec![])
        .await
        .expect("w2 holds it");
    // Several events in one fenced append: in order, chained, consecutive.
    store.append_guarded(one(ExpectedVersion::Exact(2), evs(10..14)), fence("w2", t2), vec![]).await.expect("many");
    let read = store.read_stream("run-a", 1).await.expect("read");
    assert_eq!(read.iter().map(|e| e.stream_version).collect::<Vec<_>>(), (1..=6).collect::<Vec<u64>>());
    for pair in read.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "chained in order");
    }
    for pair in read[2..].windows(2) {
        assert_eq!(pair[1].global_position, pair[0].global_position + 1, "consecutive positions");
    }
    let step =
        |e: &RecordedEvent| serde_json::from_str::<serde_json::Value>(&e.payload).expect("json")["step_id"].clone();
    assert_eq!(
        read[2..].iter().map(step).collect::<Vec<_>>(),
        vec![json!("s10"), json!("s11"), json!("s12"), json!("s13")]
    );

    // w1 comes back to life: it does not get the run back while w2 lives.
    store.beat("w1", "test", later).await.expect("beat");
    assert_eq!(store.claim("run-a", "w1", later - timeout).await.expect("claim"), None);
    // w2 exits cleanly: the run is free at once, under a new token.
    store.retire("w2").await.expect("retire");
    assert_eq!(store.orphans("w1", later - timeout, 10).await.expect("orphans"), vec!["run-a".to_owned()]);
    let t3 = store.claim("run-a", "w1", later - timeout).await.expect("claim").expect("free after a retirement");
    assert!(t3 > t2);
    let err = store
        .append_guarded(one(ExpectedVersion::Exact(6), evs(3..4)), fence("w2", t2), vec![])
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), StoreErrorKind::Fenced);
    // An append without a fence (a person's answer) is not held back.
    store.append("run-a", ExpectedVersion::Exact(6), evs(3..4)).await.expect("an unfenced append");
    // The run ended: its lease is given up.
    store.release("run-a", "w1").await.expect("release");
    assert_eq!(store.orphans("w2", later - timeout, 10).await.expect("orphans"), Vec::<String>::new());
}

/// Of many workers claiming one run at once, exactly one gets it.
async fn concurrent_claims_have_one_winner(h: Harness) {
    let store = h.store();
    let now = 5_000_000_i64;
    let mut claims = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        claims.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            store.beat(&worker, "test", now).await.expect("beat");
            store.claim("run-race", &worker, now - 10_000).await.expect("claim")
        }));
    }
    let mut won = 0;
    for c in claims {
        won += usize::from(c.await.expect("task").is_some());
    }
    assert_eq!(won, 1, "exactly one worker holds the run");
}

/// The wake-up index changes with the events in one transaction: a refused
/// append changes nothing. A due run that no live worker holds is claimed
/// by exactly one poller, with its due time; a run a live worker holds, one
/// not yet due, and one waiting for people (no row) are not; a dead
/// worker's run is.
async fn wakeups_change_with_the_events_and_are_claimed_once(h: Harness) {
    let store = h.store();
    let (now, timeout) = (2_000_000_i64, 10_000_i64);
    let wake = |s: &str, due: Option<i64>| vec![Wake { stream_id: s.into(), due_ms: due }];
    let one = |s: &str, expected, events| vec![StreamAppend { stream_id: s.into(), expected, events }];
    for w in ["w1", "w2"] {
        store.beat(w, "test", now).await.expect("beat");
    }
    // A timer due soon, one due later, one waiting for people.
    store
        .append_guarded(one("timer", ExpectedVersion::NoStream, evs(1..2)), vec![], wake("timer", Some(now + 500)))
        .await
        .expect("append");
    store
        .append_guarded(one("later", ExpectedVersion::NoStream, evs(1..2)), vec![], wake("later", Some(now + 60_000)))
        .await
        .expect("append");
    store
        .append_guarded(one("people", ExpectedVersion::NoStream, evs(1..2)), vec![], wake("people", None))
        .await
        .expect("append");
    // A conflicting append writes neither its events nor its wake-up.
    let err = store
        .append_guarded(one("people", ExpectedVersion::NoStream, evs(1..2)), vec![], wake("people", Some(now)))
        .await
        .expect_err("conflict");
    assert!(err.is_conflict(), "{err}");
    // A worker drives "busy" (due 0 while driven).
    let token = store.claim("busy", "w1", now - timeout).await.expect("claim").expect("free");
    let fence = vec![Fence { stream_id: "busy".into(), worker_id: "w1".into(), token }];
    store
        .append_guarded(one("busy", ExpectedVersion::NoStream, evs(1..2)), fence, wake("busy", Some(0)))
        .await
        .expect("append");

    let got = store.claim_due("w2", now + 1_500, now - timeout, 100).await.expect("claim_due");
    assert_eq!(got.iter().map(|(s, _, due)| (s.as_str(), *due)).collect::<Vec<_>>(), vec![("timer", now + 500)]);
    assert!(
        store.claim_due("w1", now + 1_500, now - timeout, 100).await.expect("claim_due").is_empty(),
        "w2 holds it now"
    );
    assert_eq!(store.claim("timer", "w1", now - timeout).await.expect("claim"), None);

    // The timer fired and the run waits for people: out of the index.
    let fence = vec![Fence { stream_id: "timer".into(), worker_id: "w2".into(), token: got[0].1 }];
    store
        .append_guarded(one("timer", ExpectedVersion::Exact(1), evs(2..3)), fence, wake("timer", None))
        .await
        .expect("append");
    // An answer recorded by a process that drives nothing: due now.
    store
        .append_guarded(one("people", ExpectedVersion::Exact(1), evs(2..3)), vec![], wake("people", Some(now)))
        .await
        .expect("append");

    // w1 dies: its run is due at once (due 0) for w2, with a new token.
    let later = now + 2 * timeout;
    store.beat("w2", "test", later).await.expect("beat");
    let mut got = store.claim_due("w2", later + 1_500, later - timeout, 100).await.expect("claim_due");
    got.sort();
    let names: Vec<(&str, i64)> = got.iter().map(|(s, _, due)| (s.as_str(), *due)).collect();
    assert_eq!(names, vec![("busy", 0), ("people", now)]);
    assert!(got.iter().find(|g| g.0 == "busy").expect("busy").1 > token, "a takeover raises the token");
    // Not yet due, whoever asks.
    store.set_wake("later", Some(later + 60_000)).await.expect("set_wake");
    assert!(store.claim_due("w2", later + 1_500, later - timeout, 100).await.expect("claim_due").is_empty());
}

/// Many pollers claiming the same due runs at once: each run goes to
/// exactly one of them.
async fn concurrent_pollers_split_due_runs(h: Harness) {
    let store = h.store();
    let now = 3_000_000_i64;
    for i in 0..40 {
        let s = format!("due-{i}");
        let w = vec![Wake { stream_id: s.clone(), due_ms: Some(now - i) }];
        store
            .append_guarded(
                vec![StreamAppend { stream_id: s, expected: ExpectedVersion::NoStream, events: evs(1..2) }],
                vec![],
                w,
            )
            .await
            .expect("append");
    }
    let mut polls = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        polls.push(tokio::spawn(async move {
            let worker = format!("p{w}");
            store.beat(&worker, "test", now).await.expect("beat");
            let mut mine = Vec::new();
            for _ in 0..10 {
                mine.extend(
                    store.claim_due(&worker, now, now - 10_000, 7).await.expect("claim_due").into_iter().map(|c| c.0),
                );
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for p in polls {
        all.extend(p.await.expect("task"));
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 40, "every due run is claimed");
    assert_eq!(all.len(), 40, "and none twice: {all:?}");
}

async fn append_and_read_back_byte_exact(h: Harness) {
    let store = h.store();
    // Odd key order, whitespace and non-ASCII: stored and returned as given.
    let payload = "{\"z\": 1,  \"a\": [\"é\", \"\\u00e9\", 2.50]}";
    let mut odd = NewEvent::raw("Custom", 1, &json!({}), Metadata::by("tester"));
    odd.payload = payload.to_owned();
    let r = store.append("s-1", ExpectedVersion::NoStream, vec![ev(1), odd, ev(3)]).await.expect("append");
    assert_eq!((r.first_version, r.last_version), (1, 3));
    assert_eq!(r.last_position - r.first_position, 2);

    let read = store.read_stream("s-1", 1).await.expect("read");
    assert_eq!(read.len(), 3);
    assert_eq!(read.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(read[1].payload, payload, "payload must come back byte for byte");
    assert_eq!(read[0].prev_hash, GENESIS_HASH);
    assert_eq!(read[1].prev_hash, read[0].hash);
    assert_eq!(read[2].prev_hash, read[1].hash);
    assert_eq!(read[2].hash, r.head_hash);
    assert_eq!(read[0].metadata().expect("metadata").actor.as_deref(), Some("tester"));
    assert!(read[0].recorded_at().is_some(), "recorded_at parses: {}", read[0].recorded_at);
    match Event::decode(&read[0]).expect("decode") {
        Event::StepStarted(s) => assert_eq!(s.input, json!({ "n": 1 })),
        other => panic!("decoded {other:?}"),
    }

    let tail = store.read_stream("s-1", 3).await.expect("read from 3");
    assert_eq!(tail.len(), 1);
    assert_eq!(store.stream_version("s-1").await.expect("version"), 3);
    assert_eq!(store.stream_version("nope").await.expect("version"), 0);
    assert!(store.read_stream("nope", 1).await.expect("read").is_empty());
}

async fn wrong_expected_version_is_a_conflict_and_writes_nothing(h: Harness) {
    let store = h.store();
    store.append("s", ExpectedVersion::NoStream, evs(0..3)).await.expect("append");
    let before = all_events(&h).await;

    for expected in [ExpectedVersion::Exact(5), ExpectedVersion::Exact(2), ExpectedVersion::NoStream] {
        let err = store.append("s", expected, evs(10..12)).await.expect_err("must conflict");
        match err {
            StoreError::Conflict { ref stream_id, expected: e, actual } => {
                assert_eq!(stream_id, "s");
                assert_eq!(actual, 3);
                assert_eq!(
                    Some(e),
                    match expected {
                        ExpectedVersion::Exact(v) => Some(v),
                        ExpectedVersion::NoStream => Some(0),
                        ExpectedVersion::Any => None,
                    }
                );
                assert!(err.is_conflict());
                assert!(err.to_string().contains("nothing was written"), "{err}");
            }
            other => panic!("expected conflict, got {other}"),
        }
    }
    assert_eq!(all_events(&h).await, before, "a conflict must write nothing");
}

async fn stale_writer_in_another_process_gets_a_conflict(h: Harness) {
    // Two store instances share one database; each has its own head cache.
    let a = h.store();
    let b = h.reopen().await;
    a.append("s", ExpectedVersion::NoStream, evs(0..1)).await.expect("a appends v1");
    b.append("s", ExpectedVersion::Exact(1), evs(1..2)).await.expect("b appends v2");
    // `a` still believes the stream is at 1.
    let err = a.append("s", ExpectedVersion::Exact(1), evs(2..3)).await.expect_err("stale");
    assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }), "{err}");
    // And it recovers once it has re-read.
    let v = a.read_stream("s", 1).await.expect("read").len() as u64;
    a.append("s", ExpectedVersion::Exact(v), evs(2..3)).await.expect("append after re-read");
    let read = b.read_stream("s", 1).await.expect("read");
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].prev_hash, read[1].hash, "chain continues across writers");
    assert!(cairn_events::verify(&*b).await.expect("verify").is_intact());
}

async fn group_commit_is_all_or_nothing(h: Harness) {
    let store = h.store();
    store.append("b", ExpectedVersion::NoStream, evs(0..2)).await.expect("seed");
    let before = all_events(&h).await;
    let batch = |b_expected| {
        vec![
            StreamAppend { stream_id: "a".into(), expected: ExpectedVersion::NoStream, events: evs(0..2) },
            StreamAppend { stream_id: "b".into(), expected: b_expected, events: evs(2..3) },
            StreamAppend { stream_id: "c".into(), expected: ExpectedVersion::Exact(0), events: evs(0..1) },
        ]
    };
    let err = store.append_many(batch(ExpectedVersion::Exact(1))).await.expect_err("b is at 2");
    assert!(matches!(err, StoreError::Conflict { ref stream_id, expected: 1, actual: 2 } if stream_id == "b"), "{err}");
    assert_eq!(all_events(&h).await, before, "no stream of a failed group commit is written");

    let res = store.append_many(batch(ExpectedVersion::Exact(2))).await.expect("group commit");
    assert_eq!(res.len(), 3);
    assert_eq!(res[0].first_position, before.len() as u64 + 1);
    assert_eq!(res[1].first_position, res[0].last_position + 1);
    assert_eq!(res[2].first_position, res[1].last_position + 1);
    assert_eq!(res[1].last_version, 3);
    assert_eq!(all_events(&h).await.len(), before.len() + 4);
}

async fn stale_stream_inside_group_commit_rolls_back_the_others(h: Harness) {
    // The conflict is only found by the database (cache says OK): the whole
    // statement must still roll back.
    let a = h.store();
    let b = h.reopen().await;
    a.append("x", ExpectedVersion::NoStream, evs(0..1)).await.expect("seed");
    b.append("x", ExpectedVersion::Exact(1), evs(1..2)).await.expect("other writer");
    let before = all_events(&h).await;
    let err = a
        .append_many(vec![
            StreamAppend { stream_id: "fresh".into(), expected: ExpectedVersion::NoStream, events: evs(0..3) },
            StreamAppend { stream_id: "x".into(), expected: ExpectedVersion::Exact(1), events: evs(5..6) },
        ])
        .await
        .expect_err("x moved on");
    assert!(matches!(err, StoreError::Conflict { ref stream_id, expected: 1, actual: 2 } if stream_id == "x"), "{err}");
    assert_eq!(all_events(&h).await, before);
    assert_eq!(a.stream_version("fresh").await.expect("v"), 0);
    // Positions stay gap-free after the rolled-back attempt.
    a.append("fresh", ExpectedVersion::NoStream, evs(0..1)).await.expect("append");
    let all = all_events(&h).await;
    assert_eq!(all.last().map(|e| e.global_position), Some(all.len() as u64));
}

async fn invalid_appends_are_refused_and_write_nothing(h: Harness) {
    let store = h.store();
    let mut bad_json = ev(0);
    bad_json.payload = "{not json".into();
    let cases: Vec<(Vec<StreamAppend>, &str)> = vec![
        (vec![], "no streams"),
        (
            vec![StreamAppend { stream_id: "s".into(), expected: ExpectedVersion::NoStream, events: vec![] }],
            "no events",
        ),
        (
            vec![StreamAppend { stream_id: "".into(), expected: ExpectedVersion::NoStream, events: evs(0..1) }],
            "stream id",
        ),
        (
            vec![
                StreamAppend { stream_id: "d".into(), expected: ExpectedVersion::NoStream, events: evs(0..1) },
                StreamAppend { stream_id: "d".into(), expected: ExpectedVersion::Exact(1), events: evs(1..2) },
            ],
            "appears twice",
        ),
        (
            vec![StreamAppend { stream_id: "s".into(), expected: ExpectedVersion::NoStream, events: vec![bad_json] }],
            "not valid JSON",
        ),
    ];
    for (appends, needle) in cases {
        let err = store.append_many(appends).await.expect_err("invalid");
        assert!(matches!(err, StoreError::InvalidAppend(_)), "{err}");
        assert!(err.to_string().contains(needle), "`{err}` should mention `{needle}`");
    }
    assert!(all_events(&h).await.is_empty());
}

/// The limits at their boundary: the deepest and largest payloads the
/// writer accepts are written and read back (decoded, verified, exported);
/// one level or byte more is refused with the limit named, nothing written.
async fn payloads_at_the_limits_are_written_and_read_past_them_refused(h: Harness) {
    use cairn_events::limits::{Limits, PAYLOAD_WRAPPING};
    let store = h.store();
    let limits = Limits::default();
    let nested = |levels: usize| (0..levels).fold(json!(1), |v, _| json!({ "a": v }));
    let deep = |levels: usize| {
        NewEvent::from_event(
            &Event::StepStarted(StepStarted {
                step_id: "s".into(),
                attempt: 1,
                input: nested(levels),
                scope: String::new(),
                at: None,
            }),
            Metadata::by("tester"),
        )
    };
    // `{"input": …}` adds a level around the input.
    let deepest = limits.max_depth + PAYLOAD_WRAPPING - 1;
    store.append("deep", ExpectedVersion::NoStream, vec![deep(deepest)]).await.expect("at the limit");
    let err = store.append("deep", ExpectedVersion::Exact(1), vec![deep(deepest + 1)]).await.expect_err("past it");
    assert!(matches!(&err, StoreError::LimitExceeded { source, .. } if source.limit == "max_depth"), "{err}");
    assert!(err.to_string().contains("StepStarted for stream `deep` was not written"), "{err}");
    let big = |n: usize| {
        NewEvent::from_event(
            &Event::StepStarted(StepStarted {
                step_id: "s".into(),
                attempt: 1,
                input: json!({ "s": "x".repeat(n) }),
                scope: String::new(),
                at: None,
            }),
            Metadata::by("tester"),
        )
    };
    let room = limits.max_string_bytes;
    store.append("big", ExpectedVersion::NoStream, vec![big(room)]).await.expect("a string at the limit");
    let err =
        store.append("big", ExpectedVersion::Exact(1), vec![big(limits.max_event_bytes)]).await.expect_err("past");
    assert!(matches!(&err, StoreError::LimitExceeded { .. }), "{err}");
    let all = all_events(&h).await;
    assert_eq!(all.len(), 2, "only the two at the limits were written");
    for r in &all {
        Event::decode(r).expect("every reader reads what the writer wrote");
    }
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
    let mut out = Vec::new();
    cairn_events::export::export(&*store, &Default::default(), cairn_events::export::Format::Jsonl, &mut out, None)
        .await
        .expect("export");
    cairn_events::export::verify_export(&mut std::io::Cursor::new(out), cairn_events::export::Format::Jsonl, None)
        .expect("the export of the deepest payload verifies");
}

async fn any_version_appends_at_the_end(h: Harness) {
    let store = h.store();
    store.append("w", ExpectedVersion::Any, evs(0..2)).await.expect("any on new stream");
    let r = store.append("w", ExpectedVersion::Any, evs(2..3)).await.expect("any on existing");
    assert_eq!(r.last_version, 3);
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

async fn read_all_pages_in_order_from_an_inclusive_position(h: Harness) {
    let store = h.store();
    for i in 0..10 {
        store.append(&format!("p{}", i % 3), ExpectedVersion::Any, evs(i..i + 2)).await.expect("append");
    }
    let mut got = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 7).await.expect("page");
        if page.is_empty() {
            break;
        }
        from = page.last().map(|e| e.global_position + 1).unwrap_or(from);
        got.extend(page);
    }
    assert_eq!(got.len(), 20);
    assert!(got.iter().enumerate().all(|(i, e)| e.global_position == i as u64 + 1));
    assert_eq!(store.head_position().await.expect("head"), 20);
    assert_eq!(store.read_all(20, 5).await.expect("last").len(), 1);
    assert!(store.read_all(21, 5).await.expect("past end").is_empty());
}

async fn large_appends_span_statements_atomically(h: Harness) {
    let store = h.store();
    let r = store.append("big", ExpectedVersion::NoStream, evs(0..700)).await.expect("700 events");
    assert_eq!((r.first_position, r.last_position, r.last_version), (1, 700, 700));
    let read = store.read_stream("big", 1).await.expect("read");
    assert_eq!(read.len(), 700);
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

async fn subscription_sees_later_commits_in_order(h: Harness) {
    let store = h.store();
    store.append("sub", ExpectedVersion::NoStream, evs(0..2)).await.expect("before");
    let mut sub = cairn_events::subscribe(store.clone(), 1).with_poll_interval(Duration::from_secs(30));
    let first = sub.next().await.expect("first");
    assert_eq!(first.global_position, 1);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 2..12u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                store.append("sub", ExpectedVersion::Exact(i), evs(i..i + 1)).await.expect("append");
            }
        })
    };
    // With a 30 s polling floor, only wake-ups can deliver these in time.
    let mut positions = vec![first.global_position];
    while positions.len() < 12 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("woken in time").expect("next");
        positions.push(e.global_position);
    }
    writer.await.expect("writer");
    assert_eq!(positions, (1..=12).collect::<Vec<_>>());
}

async fn subscription_polls_writes_of_other_processes(h: Harness) {
    let store = h.store();
    let other = h.reopen().await;
    let mut sub = cairn_events::subscribe(store, 1).with_poll_interval(Duration::from_millis(50));
    other.append("o", ExpectedVersion::NoStream, evs(0..3)).await.expect("other writes");
    let mut n = 0;
    while n < 3 {
        let batch =
            tokio::time::timeout(Duration::from_secs(10), sub.next_batch()).await.expect("in time").expect("batch");
        n += batch.len();
    }
    assert_eq!(n, 3);
}

async fn events_survive_reopening(h: Harness) {
    let store = h.store();
    store.append("d", ExpectedVersion::NoStream, evs(0..5)).await.expect("append");
    drop(store);
    let again = h.reopen().await;
    let read = again.read_stream("d", 1).await.expect("read");
    assert_eq!(read.len(), 5);
    again.append("d", ExpectedVersion::Exact(5), evs(5..6)).await.expect("continue after reopen");
    assert!(cairn_events::verify(&*again).await.expect("verify").is_intact());
}

async fn events_cannot_be_updated_or_deleted(h: Harness) {
    let store = h.store();
    store.append("i", ExpectedVersion::NoStream, evs(0..2)).await.expect("append");
    let upd = h.try_exec("UPDATE events SET payload = '{}' WHERE stream_version = 1").await;
    assert!(upd.expect_err("update refused").to_string().contains("immutable"));
    let del = h.try_exec("DELETE FROM events WHERE stream_version = 2").await;
    assert!(del.expect_err("delete refused").to_string().contains("immutable"));
    if h.is_postgres() {
        assert!(h.try_exec("TRUNCATE events").await.is_err(), "truncate refused");
    }
    assert_eq!(all_events(&h).await.len(), 2);
}

async fn concurrent_writers_and_a_tailer_see_every_event_once_in_order(h: Harness) {
    const WRITERS: usize = 8;
    const APPENDS: u64 = 60;
    let store = h.store();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let own = format!("own-{w}");
            let mut committed = 0u64;
            for i in 0..APPENDS {
                // Own stream: exact versions, never conflicts.
                store.append(&own, ExpectedVersion::Exact(i), evs(i..i + 1)).await.expect("own stream");
                committed += 1;
                // Shared streams: contended; retry on conflict.
                let shared = format!("shared-{}", i % 3);
                loop {
                    let v = store.stream_version(&shared).await.expect("version");
                    match store.append(&shared, ExpectedVersion::Exact(v), evs(i..i + 2)).await {
                        Ok(_) => {
                            committed += 2;
                            break;
                        }
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => panic!("shared append: {e}"),
                    }
                }
            }
            committed
        }));
    }
    let tailer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut sub = cairn_events::subscribe(store, 1).with_poll_interval(Duration::from_millis(20));
            let mut seen = Vec::new();
            let total = WRITERS as u64 * APPENDS * 3;
            while (seen.len() as u64) < total {
                let batch = tokio::time::timeout(Duration::from_secs(60), sub.next_batch())
                    .await
                    .expect("tailer stalled")
                    .expect("batch");
                seen.extend(batch.into_iter().map(|e| (e.global_position, e.event_id)));
            }
            seen
        })
    };
    let mut committed = 0;
    for t in tasks {
        committed += t.await.expect("writer");
    }
    let seen = tokio::time::timeout(Duration::from_secs(120), tailer).await.expect("tailer finished").expect("tailer");
    assert_eq!(committed, WRITERS as u64 * APPENDS * 3);
    // Strictly increasing and gap-free positions, each event once.
    for (i, (pos, _)) in seen.iter().enumerate() {
        assert_eq!(*pos, i as u64 + 1, "tailer saw positions out of order or with a gap at index {i}");
    }
    let ids: HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "an event was delivered twice");
    let full: Vec<_> = all_events(&h).await.into_iter().map(|e| (e.global_position, e.event_id)).collect();
    assert_eq!(full, seen, "the tailer saw exactly the final log");
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

conformance!(
    append_and_read_back_byte_exact,
    a_lease_has_one_live_holder_and_fences_a_stale_one,
    concurrent_claims_have_one_winner,
    wakeups_change_with_the_events_and_are_claimed_once,
    concurrent_pollers_split_due_runs,
    wrong_expected_version_is_a_conflict_and_writes_nothing,
    stale_writer_in_another_process_gets_a_conflict,
    group_commit_is_all_or_nothing,
    stale_stream_inside_group_commit_rolls_back_the_others,
    invalid_appends_are_refused_and_write_nothing,
    payloads_at_the_limits_are_written_and_read_past_them_refused,
    any_version_appends_at_the_end,
    read_all_pages_in_order_from_an_inclusive_position,
    large_appends_span_statements_atomically,
    subscription_sees_later_commits_in_order,
    subscription_polls_writes_of_other_processes,
    events_survive_reopening,
    events_cannot_be_updated_or_deleted,
    concurrent_writers_and_a_tailer_see_every_event_once_in_order,
);
