//! Old schema versions are upcast on read without rewriting rows; unknown or
//! newer events, unreachable databases and newer database schemas give clear
//! typed errors.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

mod common;

use cairn_events::{DecodeError, Event, ExpectedVersion, Metadata, NewEvent, StepFailed, StoreErrorKind, Upcasters};
use common::Harness;
use serde_json::json;

async fn v1_payload_is_read_as_v2_and_never_rewritten(h: Harness) {
    let store = h.store();
    let v1 = json!({ "step_id": "publish", "attempt": 2, "error": "http.status: 503 Service Unavailable" });
    store
        .append("run-old", ExpectedVersion::NoStream, vec![NewEvent::raw("StepFailed", 1, &v1, Metadata::by("engine"))])
        .await
        .expect("append v1");
    let stored = store.read_stream("run-old", 1).await.expect("read").remove(0);
    assert_eq!(stored.schema_version, 1);
    match Event::decode(&stored).expect("decode") {
        Event::StepFailed(StepFailed { step_id, attempt, error_kind, message, retryable, retry_after_ms }) => {
            assert_eq!(retry_after_ms, None);
            assert_eq!((step_id.as_str(), attempt), ("publish", 2));
            assert_eq!(error_kind, "http.status");
            assert_eq!(message, "503 Service Unavailable");
            assert!(!retryable);
        }
        other => panic!("decoded {other:?}"),
    }
    // The row is untouched: same payload, same version, chain intact.
    let again = store.read_stream("run-old", 1).await.expect("read").remove(0);
    assert_eq!(again, stored);
    assert_eq!(again.payload_value().expect("json"), v1);
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

async fn unknown_and_newer_events_are_typed_errors(h: Harness) {
    let store = h.store();
    let events = vec![
        NewEvent::raw("FromTheFuture", 1, &json!({}), Metadata::default()),
        NewEvent::raw("StepFailed", 9, &json!({}), Metadata::default()),
        NewEvent::raw("StepStarted", 1, &json!({ "step_id": 5 }), Metadata::default()),
    ];
    store.append("run-x", ExpectedVersion::NoStream, events).await.expect("append");
    let read = store.read_stream("run-x", 1).await.expect("read");

    let err = Event::decode(&read[0]).expect_err("unknown type");
    assert!(
        matches!(err, DecodeError::UnknownEventType { ref event_type, ref at } if event_type == "FromTheFuture" && at.stream_version == 1)
    );
    assert!(err.to_string().contains("FromTheFuture") && err.to_string().contains("run-x"), "{err}");

    let err = Event::decode(&read[1]).expect_err("newer schema");
    assert!(matches!(err, DecodeError::SchemaTooNew { found: 9, supported: 2, .. }), "{err}");
    assert!(err.to_string().contains("upgrade Cairn"), "{err}");

    let err = Event::decode(&read[2]).expect_err("bad shape");
    assert!(matches!(err, DecodeError::InvalidPayload { .. }), "{err}");
}

async fn database_schema_newer_than_the_binary_is_refused(h: Harness) {
    h.store()
        .append("s", ExpectedVersion::NoStream, vec![NewEvent::raw("X", 1, &json!({}), Metadata::default())])
        .await
        .expect("append");
    let checksum = if h.is_postgres() { "'\\x00'::bytea" } else { "x'00'" };
    h.exec(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (29991231000000, 'from a newer cairn', true, {checksum}, 0)"
    ))
    .await;
    let err = match &h {
        Harness::Sqlite { path, .. } => {
            cairn_events::sqlite::SqliteStore::open(path, Default::default()).await.err().expect("refused")
        }
        Harness::Postgres { opts, .. } => {
            cairn_events::postgres::PgStore::connect_with(opts.clone(), "the test db".into(), Default::default())
                .await
                .err()
                .expect("refused")
        }
    };
    assert_eq!(err.kind(), StoreErrorKind::SchemaTooNew, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("29991231000000") && msg.contains("upgrade Cairn"), "{msg}");
}

conformance!(
    v1_payload_is_read_as_v2_and_never_rewritten,
    unknown_and_newer_events_are_typed_errors,
    database_schema_newer_than_the_binary_is_refused,
);

#[test]
fn upcasters_chain_versions_and_refuse_gaps() {
    let mut u = Upcasters::new();
    u.register("T", 1, |mut v| {
        v["b"] = v["a"].clone();
        Ok(v)
    });
    let at = cairn_events::Location { stream_id: "s".into(), stream_version: 1, global_position: 1 };
    assert_eq!(u.upcast("T", 1, 2, json!({"a": 1}), &at).expect("1->2"), json!({"a": 1, "b": 1}));
    assert!(matches!(u.upcast("T", 1, 3, json!({}), &at), Err(DecodeError::NoUpcaster { found: 2, .. })));
    assert!(matches!(u.upcast("T", 4, 3, json!({}), &at), Err(DecodeError::SchemaTooNew { .. })));
}

#[tokio::test]
async fn unreachable_postgres_names_the_database_without_its_password() {
    let url = "postgres://cairn:hunter2secret@127.0.0.1:1/events?password=alsosecret";
    let err = cairn_events::open(url).await.err().expect("unreachable");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1/events"), "names the database: {msg}");
    assert!(!msg.contains("hunter2secret") && !msg.contains("alsosecret"), "leaks the password: {msg}");
}

#[tokio::test]
async fn unopenable_sqlite_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let db = file.join("cairn.db");
    let err = cairn_events::open(&format!("sqlite://{}", db.display())).await.err().expect("cannot open");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(err.to_string().contains(&db.display().to_string()), "{err}");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 8192]).expect("write");
    let err = cairn_events::open(&garbage.display().to_string()).await.err().expect("not a database");
    assert!(err.to_string().contains("garbage.db"), "{err}");

    let err = cairn_events::open("mysql://x@y/z").await.err().expect("unsupported");
    assert!(err.to_string().contains("sqlite://"), "{err}");
    let err = cairn_events::open("sqlite://x.db?journal=off").await.err().expect("unknown param");
    assert!(err.to_string().contains("synchronous"), "{err}");
}

/// The connection appends go through dies (a restarted server, a dropped
/// socket): the append that was on it fails with a clear error, nothing is
/// half-written, and the next append reconnects.
#[tokio::test]
async fn a_lost_postgres_append_connection_is_replaced() {
    use cairn_events::EventStore;
    use sqlx::Connection;
    let Some((opts, schema)) = cairn_events::testing::fresh_pg_schema().await else { return };
    let app = schema.clone();
    let store = cairn_events::postgres::PgStore::connect_with(
        opts.application_name(&app),
        "fault test".into(),
        cairn_events::postgres::PgConfig { max_connections: 4, ..Default::default() },
    )
    .await
    .expect("open");
    let ev = |n: u32| {
        vec![NewEvent::from_event(
            &Event::StepFailed(StepFailed {
                step_id: format!("s{n}"),
                attempt: 1,
                error_kind: "k".into(),
                message: "m".into(),
                retryable: false,
                retry_after_ms: None,
            }),
            Metadata::by("t"),
        )]
    };
    store.append("a", ExpectedVersion::NoStream, ev(1)).await.expect("first");
    let mut admin = sqlx::PgConnection::connect(&cairn_events::testing::pg_url()).await.expect("admin");
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&app)
            .fetch_all(&mut admin)
            .await
            .expect("terminate");
    assert!(!killed.is_empty(), "the store's connections carry the application name it was given");
    // The first append after the loss may fail (its connection is gone);
    // one more attempt goes through on a fresh connection.
    let second = match store.append("a", ExpectedVersion::Exact(1), ev(2)).await {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.kind(), StoreErrorKind::Unavailable, "{e}");
            eprintln!("the append on the lost connection failed: {e}");
            store.append("a", ExpectedVersion::Exact(1), ev(2)).await.expect("after reconnect")
        }
    };
    assert_eq!(second.last_version, 2);
    let events = store.read_stream("a", 1).await.expect("read");
    assert_eq!(events.len(), 2);
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

/// AI parameters are typed, and the bytes stay what the untyped map wrote:
/// the same keys in the same order, absent ones left out, unknown ones
/// kept; an event recorded before the type (or with `null`) still decodes.
#[test]
fn typed_ai_params_write_the_bytes_the_untyped_map_wrote() {
    use cairn_events::{AiEstimate, AiParams, AiPrice};
    let typed = AiParams {
        mode: Some("json_schema".into()),
        estimate: Some(AiEstimate { input_tokens: 120, output_tokens: 400, cost_micros: Some(1960) }),
        temperature: Some(0.2),
        max_output_tokens: Some(400),
        price: Some(AiPrice {
            input_per_million: 3.0,
            output_per_million: 4.0,
            currency: "USD".into(),
            table: "default@1".into(),
        }),
        template: Some(serde_json::json!({ "id": "post@2", "sha256": "ab" })),
        fallback_to: Some("json_object".into()),
        other: Default::default(),
    };
    // What the decider wrote before AiParams existed.
    let untyped = serde_json::json!({
        "mode": "json_schema",
        "estimate": { "input_tokens": 120, "output_tokens": 400, "cost_micros": 1960 },
        "temperature": 0.2,
        "max_output_tokens": 400,
        "price": { "input_per_million": 3.0, "output_per_million": 4.0, "currency": "USD", "table": "default@1" },
        "template": { "id": "post@2", "sha256": "ab" },
        "fallback_to": "json_object",
    });
    assert_eq!(serde_json::to_string(&typed).expect("json"), serde_json::to_string(&untyped).expect("json"));
    let sparse = AiParams {
        mode: Some("none".into()),
        estimate: Some(AiEstimate { input_tokens: 1, output_tokens: 2, cost_micros: None }),
        ..Default::default()
    };
    let old = r#"{"estimate":{"cost_micros":null,"input_tokens":1,"output_tokens":2},"mode":"none"}"#;
    assert_eq!(serde_json::to_string(&sparse).expect("json"), old);
    assert_eq!(serde_json::from_str::<AiParams>(old).expect("decode"), sparse);
    // A key this version does not know survives a round trip.
    let unknown: AiParams = serde_json::from_str(r#"{"mode":"tool","seed":7}"#).expect("decode");
    assert_eq!(unknown.other.get("seed"), Some(&serde_json::json!(7)));
    assert_eq!(serde_json::to_string(&unknown).expect("json"), r#"{"mode":"tool","seed":7}"#);
    // An attempt recorded with no parameters, or null ones, decodes.
    for params in ["", r#","params":null"#, r#","params":{}"#] {
        let payload = format!(r#"{{"step_id":"s","attempt":1,"provider":"p","model":"m","messages":[]{params}}}"#);
        let e: cairn_events::AiAttemptStarted = serde_json::from_str(&payload).expect("decode");
        assert_eq!(e.params, AiParams::default(), "{payload}");
    }
}
