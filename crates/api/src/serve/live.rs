//! A run's events live, as Server-Sent Events. Each event's SSE id is its
//! stream version; a client that reconnects with `Last-Event-ID` (or
//! `?after=`) gets every event after that one, so it misses nothing. The
//! stream ends with an `end` event once the run has ended and everything
//! was sent.
//!
//! One task follows the log for the whole server ([`Tail`]) and hands each
//! new event to the clients watching its stream, so a commit costs one read
//! however many clients watch (and none while nobody watches). A client registers before it reads what it
//! missed from its stream, so nothing falls between the two; versions it
//! already sent are skipped. A client too slow to keep up is dropped by the
//! tail and catches up from its stream again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State as S};
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use cairn_events::{EventStore, RecordedEvent};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::State;
use super::extract::{MAX_POSITION, Pos, Q, parse_id};
use super::problem::{ApiError, ApiResult};
use super::runs::RawEvent;

/// Where to start.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Events after this stream version (the `Last-Event-ID` header wins).
    #[serde(default)]
    pub after: Option<Pos>,
}

const TERMINAL: [&str; 3] = ["RunCompleted", "RunFailed", "RunCancelled"];

type Watchers = HashMap<String, Vec<mpsc::Sender<RecordedEvent>>>;

/// How often the tail reads the log without a wake-up while anyone
/// watches (commits of other processes wake nobody here).
const POLL: Duration = Duration::from_millis(250);
/// Events one read of the log takes.
const BATCH: usize = 512;

/// Follows the log and hands new events to the clients of their stream.
/// With no client watching, it reads nothing: the first client to
/// register notes the log's head before it registers (then reads its
/// stream), and the tail goes on from there.
pub struct Tail {
    inner: Mutex<Inner>,
    warmed: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    watchers: Watchers,
    /// The position the tail reads next; `None` while nobody watches.
    next: Option<u64>,
}

impl Tail {
    /// Starts following the log (from its head once someone watches).
    pub async fn spawn(store: Arc<dyn EventStore>, mut stop: tokio::sync::watch::Receiver<bool>) -> Arc<Tail> {
        let tail = Arc::new(Tail { inner: Mutex::new(Inner::default()), warmed: tokio::sync::Notify::new() });
        let me = tail.clone();
        tokio::spawn(async move {
            let mut wake = store.wakeups();
            loop {
                let from = {
                    let mut i = me.lock();
                    if i.watchers.is_empty() {
                        i.next = None;
                    }
                    i.next
                };
                let Some(from) = from else {
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = me.warmed.notified() => {}
                    }
                    continue;
                };
                // Seen before reading: a commit after the read wakes the wait.
                wake.borrow_and_update();
                match store.read_all(from, BATCH).await {
                    Ok(events) if !events.is_empty() => me.hand_out(events),
                    Ok(_) => {
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = wake.changed() => {}
                            () = tokio::time::sleep(POLL) => {}
                            () = me.warmed.notified() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live events: cannot follow the log");
                        // Everyone catches up from their streams.
                        {
                            let mut i = me.lock();
                            i.watchers.clear();
                            i.next = None;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        tail
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_out(&self, events: Vec<RecordedEvent>) {
        let mut i = self.lock();
        let Some(last) = events.last().map(|e| e.global_position) else { return };
        // Gone cold and warm again meanwhile: the newer start may be later.
        i.next = i.next.map(|n| n.max(last + 1));
        let w = &mut i.watchers;
        for e in events {
            if let Some(list) = w.get_mut(&e.stream_id) {
                // Full or closed: that client is dropped and re-reads its stream.
                list.retain(|tx| tx.try_send(e.clone()).is_ok());
                if list.is_empty() {
                    w.remove(&e.stream_id);
                }
            }
        }
    }

    /// Waits until the run whose stream this is has ended (its newest event
    /// ends it) or `deadline` passes; whether it ended. It registers before
    /// it looks at the stream, so an end committed between the two is seen.
    pub async fn until_ended(
        &self,
        store: &dyn EventStore,
        stream: &str,
        deadline: tokio::time::Instant,
    ) -> Result<bool, cairn_events::StoreError> {
        loop {
            let mut rx = self.watch(store, stream).await?;
            let version = store.stream_version(stream).await?;
            let newest = store.read_stream(stream, version.max(1)).await?;
            if newest.last().is_some_and(|e| TERMINAL.contains(&e.event_type.as_str())) {
                return Ok(true);
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Ok(false),
                    Ok(Some(e)) if TERMINAL.contains(&e.event_type.as_str()) => return Ok(true),
                    Ok(Some(_)) => {}
                    // Dropped as too slow, or the tail lost the log: look again.
                    Ok(None) => {
                        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(20)))
                            .await
                            .is_err()
                        {
                            return Ok(false);
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Registers a client of `stream`: it gets every event committed to
    /// the stream after this returns (and maybe some before: a client
    /// reads its stream after registering and skips what it has).
    async fn watch(
        &self,
        store: &dyn EventStore,
        stream: &str,
    ) -> Result<mpsc::Receiver<RecordedEvent>, cairn_events::StoreError> {
        loop {
            // Cold (nobody watches): the head before registering is where
            // the tail starts. Every event after it is read by the tail;
            // every one up to it, the client reads from its stream.
            let head = if self.lock().next.is_none() { Some(store.head_position().await?) } else { None };
            let rx = {
                let mut i = self.lock();
                match (i.next, head) {
                    (Some(_), _) => {}
                    (None, Some(h)) => i.next = Some(h + 1),
                    // Gone cold since it looked: look at the head again.
                    (None, None) => continue,
                }
                let (tx, rx) = mpsc::channel(256);
                let list = i.watchers.entry(stream.to_owned()).or_default();
                list.retain(|t| !t.is_closed());
                list.push(tx);
                rx
            };
            self.warmed.notify_one();
            return Ok(rx);
        }
    }
}

/// `GET /runs/{id}/live`.
pub async fn live(
    S(state): S<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Q(q): Q<LiveQuery>,
) -> ApiResult<Response> {
    let id = parse_id(&id, "run")?;
    let stream_id = cairn_events::run_stream(id);
    if state.store.stream_version(&stream_id).await? == 0 {
        return Err(ApiError::not_found("unknown-run", format!("no run with id {id}")));
    }
    let after = match headers.get("last-event-id") {
        Some(v) => {
            v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|v| *v <= MAX_POSITION).ok_or_else(
                || {
                    ApiError::bad_request(
                        "bad-last-event-id",
                        "Last-Event-ID must be a stream version this stream sent (a number)",
                    )
                },
            )?
        }
        None => q.after.map_or(0, |p| p.0),
    };
    Ok(stream(state, stream_id, after))
}

/// The server-sent events of a stream after version `after`, then as they
/// come, until the run's end (`end`) or the client leaves.
pub(super) fn stream(state: Arc<State>, stream_id: String, after: u64) -> Response {
    let (tx, rx) = mpsc::channel::<Sse>(64);
    tokio::spawn(follow(state, stream_id, after, tx));
    let events =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    axum::response::Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

fn sse(r: &RecordedEvent) -> Sse {
    let data = serde_json::to_string(&RawEvent::of(r)).unwrap_or_default();
    Sse::default().id(r.stream_version.to_string()).event(r.event_type.clone()).data(data)
}

fn end(version: u64) -> Sse {
    Sse::default().event("end").data(format!("{{\"stream_version\":{version}}}"))
}

/// Sends one event (and `end` after the run's last); `false` when the
/// stream is over (the run ended or the client left).
async fn emit(out: &mpsc::Sender<Sse>, r: &RecordedEvent, after: &mut u64) -> bool {
    if out.send(sse(r)).await.is_err() {
        return false;
    }
    *after = r.stream_version;
    if TERMINAL.contains(&r.event_type.as_str()) {
        let _ = out.send(end(*after)).await;
        return false;
    }
    true
}

/// Sends the stream's events after `after` to `out`, then new ones as they
/// come, until the run's last event (then `end`) or the client leaves.
async fn follow(state: Arc<State>, stream_id: String, mut after: u64, out: mpsc::Sender<Sse>) {
    loop {
        let mut rx = match state.tail.watch(&*state.store, &stream_id).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "live events: cannot read the log's head");
                return;
            }
        };
        // What was missed, read after registering: nothing falls between.
        let missed = match state.store.read_stream(&stream_id, after + 1).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "live events: cannot read the stream");
                return;
            }
        };
        if missed.is_empty() && after > 0 {
            // A client back after the end gets `end` at once.
            let v = state.store.stream_version(&stream_id).await.unwrap_or(0);
            let last = state.store.read_stream(&stream_id, v.max(1)).await.unwrap_or_default();
            if after >= v && last.first().is_some_and(|r| TERMINAL.contains(&r.event_type.as_str())) {
                let _ = out.send(end(v)).await;
                return;
            }
        }
        for r in &missed {
            if !emit(&out, r, &mut after).await {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                e = rx.recv() => e,
                () = out.closed() => return,
            };
            let Some(r) = next else { break }; // dropped by the tail: catch up again
            if r.stream_version <= after {
                continue;
            }
            if r.stream_version != after + 1 {
                break; // a gap: read it from the stream
            }
            if !emit(&out, &r, &mut after).await {
                return;
            }
        }
    }
}
