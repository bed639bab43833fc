//! An HTTP endpoint that counts calls by the `key` in their body, for the
//! tests of many workers: which effects ran, how often, and when.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// An HTTP endpoint that counts calls by the `key` in their body and
/// answers after `delay`, or not at all while `hold` is set.
#[derive(Clone)]
pub struct Counter {
    pub url: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    pub hold: Arc<AtomicBool>,
    /// Each call's key, when it came and when it was answered.
    windows: Arc<Mutex<Vec<Call>>>,
}

/// A call's key, when it came and when it was answered.
/// How long after its answer a call may still be unrecorded: the worker
/// commits the outcome after the response, later on a loaded machine.
const RECORDING: Duration = Duration::from_secs(3);

pub type Call = (String, Instant, Option<Instant>);

impl Counter {
    /// Answers `/count` after `delay`; `/flaky` the same, but 503 to the
    /// first call of each key (the step's retry policy takes it from there).
    pub async fn start(delay: Duration) -> Counter {
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let hold = Arc::new(AtomicBool::new(false));
        let windows: Arc<Mutex<Vec<Call>>> = Arc::default();
        let handler = |flaky: bool| {
            let (c, h, w) = (calls.clone(), hold.clone(), windows.clone());
            move |axum::Json(body): axum::Json<Value>| {
                let (c, h, w) = (c.clone(), h.clone(), w.clone());
                async move {
                    let key = body["key"].as_str().unwrap_or("?").to_owned();
                    let n = {
                        let mut c = c.lock().expect("lock");
                        let n = c.entry(key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let i = {
                        let mut w = w.lock().expect("lock");
                        w.push((key, Instant::now(), None));
                        w.len() - 1
                    };
                    tokio::time::sleep(delay).await;
                    while h.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    w.lock().expect("lock")[i].2 = Some(Instant::now());
                    let status = if flaky && n == 1 { 503 } else { 200 };
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        axum::Json(json!({ "ok": status == 200 })),
                    )
                }
            }
        };
        let app = axum::Router::new()
            .route("/count", axum::routing::post(handler(false)))
            .route("/flaky", axum::routing::post(handler(true)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Counter { url: format!("http://{addr}/count"), calls, hold, windows }
    }

    /// The calls of `key` beyond `expected` that no kill explains: each
    /// repeat must follow a call that was in flight at a kill (started
    /// before it, answered after it or less than [`RECORDING`] before it, the
    /// time to record the outcome).
    pub fn unexplained(&self, key: &str, expected: usize, kills: &[Instant]) -> Vec<String> {
        let w = self.windows.lock().expect("lock");
        let calls: Vec<&Call> = w.iter().filter(|c| c.0 == key).collect();
        let mut out = Vec::new();
        for (j, call) in calls.iter().enumerate().skip(expected) {
            let before = calls[j - 1];
            let in_flight = kills
                .iter()
                .any(|k| *k >= before.1 && before.2.is_none_or(|end| *k <= end + RECORDING) && *k <= call.1);
            if !in_flight {
                out.push(format!("{key} call {} repeated with no kill while call {j} was in flight", j + 1));
            }
        }
        out
    }

    pub fn count(&self, key: &str) -> usize {
        self.calls.lock().expect("lock").get(key).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.calls.lock().expect("lock").values().sum()
    }

    pub fn twice(&self) -> Vec<(String, usize)> {
        let calls = self.calls.lock().expect("lock");
        let mut v: Vec<(String, usize)> = calls.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }
}
