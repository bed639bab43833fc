//! Event decoding: the first byte picks an event type of the catalog, the
//! rest is its stored payload. Decoding never panics; a payload the writer's
//! limits accept is always one the reader can parse (the invariant that
//! keeps a projection from stopping on an event).
#![no_main]

use cairn_events::{Event, Metadata, NewEvent, RecordedEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(payload) = std::str::from_utf8(rest) else { return };
    let catalog = cairn_events::catalog();
    let info = &catalog[pick as usize % catalog.len()];
    let recorded = RecordedEvent {
        global_position: 1,
        stream_id: "run-fuzz".into(),
        stream_version: 1,
        event_id: "e".into(),
        event_type: info.event_type.to_owned(),
        schema_version: info.schema_version,
        recorded_at: "2026-12-06T00:00:00Z".into(),
        metadata: "{}".into(),
        payload: payload.to_owned(),
        prev_hash: String::new(),
        hash: String::new(),
    };
    let decoded = Event::decode(&recorded);
    if cairn_events::limits::Limits::default().check_payload(payload).is_ok() {
        // Within the limits: the reader parsed it (it may still be the
        // wrong shape for this type, which is a clean error).
        if let Err(cairn_events::DecodeError::InvalidPayload { message, .. }) = &decoded {
            assert!(!message.contains("recursion limit"), "{message}");
        }
    }
    if let Ok(e) = decoded {
        // What decodes re-encodes, as the same type.
        let again = NewEvent::from_event(&e, Metadata::by("fuzz"));
        assert_eq!(again.event_type, info.event_type);
    }
});
