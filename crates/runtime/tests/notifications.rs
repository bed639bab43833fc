//! Email notifications against a real SMTP server process (aiosmtpd, from
//! PyPI) on loopback: a request and its reminders are sent and recorded, a
//! failed send is recorded and retried later, and never fails the run.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_events::clock::ManualClock;
use cairn_events::{Event, EventStore};
use cairn_runtime::Config;
use cairn_runtime::people::Vote;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use common::servers;
use serde_json::json;

/// An engine on a clock the test moves (reminders and retries fall due
/// when it says, not after a sleep).
fn engine(store: &Arc<dyn EventStore>, port: u16, retry: &str, clock: &Arc<ManualClock>) -> Engine {
    let yaml = format!(
        "email: {{ host: 127.0.0.1, port: {port}, tls: none, from: \"Cairn <cairn@example.com>\", base_url: \"http://cairn.local\", retry_interval: {retry}, max_attempts: 3 }}\npeople:\n  grace: {{ email: grace@example.com }}\n"
    );
    Engine::new(store.clone(), TaskRegistry::builtin())
        .with_config(Config::parse(&yaml, "cairn.yaml").expect("config"))
        .with_clock(clock.clone())
}

const REVIEW: &str = r#"name: review
steps:
  - id: review
    approval:
      approvers: [grace, ada@example.com, nobody]
      summary: "Publish the launch post?"
      content: { title: "Launch" }
      deadline: 3s
      reminders: [2500ms]
"#;

fn sent(evs: &[Event]) -> Vec<(String, String)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::NotificationSent(n) => Some((n.purpose.clone(), n.recipient.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn requests_and_reminders_are_emailed_and_recorded() {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (_d, store) = common::sqlite().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let e = engine(&store, smtp.port, "1s", &clock);
    let (w, v) = common::publish(&e, REVIEW).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Running);
    let evs = common::events(&store, id).await;
    let mut got = sent(&evs);
    got.sort();
    assert_eq!(
        got,
        [("request".to_owned(), "ada@example.com".to_owned()), ("request".to_owned(), "grace@example.com".to_owned())]
    );
    // An identity with no address is recorded as a notice that could not go out.
    assert!(evs.iter().any(|e| matches!(e, Event::NotificationFailed(n) if n.recipient == "nobody" && n.retry_at.is_none() && n.error.contains("people:"))));
    let mails = servers::mails(&smtp);
    assert_eq!(mails.len(), 2);
    // Each mail carries its recipient's own token.
    let token = e.answer_token(id, "review", 1, "grace");
    let grace = mails.iter().find(|m| m.contains("To: grace@example.com")).expect("grace's mail");
    assert!(grace.contains("Approval needed: Publish the launch post?"), "{grace}");
    assert!(grace.contains(&format!("http://cairn.local/runs/{id}/steps/review?token={token}")), "{grace}");
    // The reminder falls due 0.5 s in; the run is still waiting, so it goes out.
    clock.advance(Duration::from_millis(600));
    e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    let evs = common::events(&store, id).await;
    assert_eq!(sent(&evs).iter().filter(|(p, _)| p == "reminder-1").count(), 2);
    assert!(servers::mails(&smtp).iter().any(|m| m.contains("Reminder: Approval needed")));
    let ada = mails.iter().find(|m| m.contains("To: ada@example.com")).expect("ada's mail");
    assert!(!ada.contains(&token), "one approver's token is not in another's mail");
    // Grace's token does not answer as Ada, another approver of the same request.
    assert!(ada.contains(&e.answer_token(id, "review", 1, "ada@example.com")), "{ada}");
    let as_ada = Vote::new("ada@example.com", token.clone(), false);
    let refused = e.decide_approval(id, "review", &as_ada).await.expect_err("grace's token answers as ada");
    assert!(matches!(refused, cairn_runtime::people::HumanError::BadToken { .. }), "{refused}");
    // A decision from a link in the mail completes the run.
    let vote = Vote::new("grace", token, true);
    e.decide_approval(id, "review", &vote).await.expect("decide");
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Completed);
}

#[tokio::test]
async fn a_failed_send_is_retried_later_and_never_fails_the_run() {
    let (_d, store) = common::sqlite().await;
    // Nothing listens there yet.
    let port = servers::free_port();
    let clock = ManualClock::new(chrono::Utc::now());
    let e = engine(&store, port, "300ms", &clock);
    let src =
        "name: f\nsteps:\n  - id: brief\n    form: { assignees: [grace], fields: [{ name: topic, required: true }] }\n";
    let (w, v) = common::publish(&e, src).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Running, "a failed notice does not fail the run");
    let evs = common::events(&store, id).await;
    let failed: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::NotificationFailed(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].attempt, failed[0].recipient.as_str()), (1, "grace@example.com"));
    assert!(failed[0].retry_at.is_some() && failed[0].error.contains(&port.to_string()), "{:?}", failed[0]);
    let Some(smtp) = servers::smtp_on(Some(port)) else { return };
    clock.advance(Duration::from_millis(400));
    e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    let evs = common::events(&store, id).await;
    assert_eq!(sent(&evs), [("request".to_owned(), "grace@example.com".to_owned())]);
    let mail = &servers::mails(&smtp)[0];
    assert!(mail.contains("Input needed") && mail.contains("Fields: topic"), "{mail}");
}
