//! `verify` finds every kind of tampering and names the first broken stream
//! and version, on both backends.
#![allow(missing_docs)]

mod common;

use cairn_events::{BreakKind, Event, ExpectedVersion, Metadata, NewEvent, StepCompleted};
use common::Harness;
use serde_json::json;

fn ev(n: u64) -> NewEvent {
    NewEvent::from_event(
        &Event::StepCompleted(StepCompleted {
            step_id: format!("s{n}"),
            attempt: 1,
            output: json!({"n": n}),
            duration_ms: n,
        }),
        Metadata::by("engine"),
    )
}

/// Two interleaved streams: `run-a` at positions 1,3,5,7,9 and `run-b` at 2,4,6,8,10.
async fn seeded(h: &Harness) {
    let store = h.store();
    for i in 0..5u64 {
        store.append("run-a", ExpectedVersion::Exact(i), vec![ev(i)]).await.expect("a");
        store.append("run-b", ExpectedVersion::Exact(i), vec![ev(i)]).await.expect("b");
    }
    let report = cairn_events::verify(&*store).await.expect("verify");
    assert!(report.is_intact(), "{:?}", report.breaks);
    assert_eq!((report.events, report.streams, report.head_position), (10, 2, 10));
    h.disable_immutability().await;
}

async fn first_break(h: &Harness) -> cairn_events::ChainBreak {
    let report = cairn_events::verify(&*h.store()).await.expect("verify runs");
    assert!(!report.is_intact(), "tampering went unnoticed");
    report.first_break().cloned().expect("a break")
}

fn names(b: &cairn_events::ChainBreak, stream: &str, version: u64) {
    assert_eq!(b.stream_id.as_deref(), Some(stream), "{b}");
    assert_eq!(b.stream_version, Some(version), "{b}");
}

async fn changed_payload_is_detected(h: Harness) {
    seeded(&h).await;
    h.exec(r#"UPDATE events SET payload = '{"step_id":"s2","attempt":1,"output":{"n":999},"duration_ms":2}' WHERE stream_id = 'run-a' AND stream_version = 3"#).await;
    let b = first_break(&h).await;
    assert_eq!(b.kind, BreakKind::HashMismatch);
    names(&b, "run-a", 3);
}

async fn deleted_row_is_detected(h: Harness) {
    seeded(&h).await;
    h.exec("DELETE FROM events WHERE stream_id = 'run-b' AND stream_version = 2").await;
    let report = cairn_events::verify(&*h.store()).await.expect("verify");
    let missing = report.breaks.iter().find(|b| b.kind == BreakKind::MissingVersions).expect("version gap found");
    names(missing, "run-b", 2);
    let gap = report.first_break().expect("first break");
    assert_eq!(gap.kind, BreakKind::MissingPositions);
    assert_eq!(gap.global_position, 4);
    names(gap, "run-b", 2);
}

async fn swapped_rows_are_detected(h: Harness) {
    seeded(&h).await;
    // Swap the global positions of run-a v2 (position 3) and v3 (position 5):
    // the stream now reads 1, 3, 2, 4, 5 in log order.
    h.exec("UPDATE events SET global_position = -1 WHERE global_position = 3").await;
    h.exec("UPDATE events SET global_position = 3 WHERE global_position = 5").await;
    h.exec("UPDATE events SET global_position = 5 WHERE global_position = -1").await;
    let b = first_break(&h).await;
    names(&b, "run-a", 2);
    assert_eq!(b.global_position, 3);
}

async fn swapped_contents_are_detected(h: Harness) {
    seeded(&h).await;
    // Swap everything but the version numbers of run-b v2 and v3.
    for sql in [
        "UPDATE events SET stream_version = -2 WHERE stream_id = 'run-b' AND stream_version = 2",
        "UPDATE events SET stream_version = 2 WHERE stream_id = 'run-b' AND stream_version = 3",
        "UPDATE events SET stream_version = 3 WHERE stream_id = 'run-b' AND stream_version = -2",
    ] {
        h.exec(sql).await;
    }
    let b = first_break(&h).await;
    names(&b, "run-b", 2);
}

async fn recomputed_but_wrong_hash_is_detected(h: Harness) {
    seeded(&h).await;
    // The attacker changes run-a v2 and recomputes its own hash correctly:
    // v2 looks fine alone, but v3's prev_hash no longer links to it.
    let store = h.store();
    let mut e = store.read_stream("run-a", 2).await.expect("read").remove(0);
    e.payload = r#"{"step_id":"s1","attempt":1,"output":{"n":"forged"},"duration_ms":1}"#.into();
    let forged = e.computed_hash();
    h.exec(&format!(
        "UPDATE events SET payload = '{}', hash = '{forged}' WHERE stream_id = 'run-a' AND stream_version = 2",
        e.payload
    ))
    .await;
    let b = first_break(&h).await;
    assert_eq!(b.kind, BreakKind::BrokenLink, "{b}");
    names(&b, "run-a", 3);

    // A well-formed hash that simply is not the event's hash.
    h.exec(&format!("UPDATE events SET hash = '{}' WHERE stream_id = 'run-b' AND stream_version = 1", "ab".repeat(32)))
        .await;
    let report = cairn_events::verify(&*h.store()).await.expect("verify");
    let b = report.first_break().expect("break");
    assert_eq!(b.kind, BreakKind::HashMismatch);
    names(b, "run-b", 1);
}

conformance!(
    changed_payload_is_detected,
    deleted_row_is_detected,
    swapped_rows_are_detected,
    swapped_contents_are_detected,
    recomputed_but_wrong_hash_is_detected,
);
