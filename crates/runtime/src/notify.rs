//! Notifications about forms and approvals that wait for people: email over
//! SMTP (lettre). One call sends one message; the decider records the
//! outcome and retries failures on a schedule, never failing the run.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use uuid::Uuid;

use cairn_core::config::EmailConfig;

/// What a message is about.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: &'a str,
    /// `request`, `reminder-N` or `escalation`.
    pub purpose: &'a str,
    /// The recipient's identity.
    pub identity: &'a str,
    /// `{kind, title, fields, deadline, content}` of the request.
    pub request: &'a Value,
    /// The recipient's own answer token (`cairn_core::human::answer_token`), shown
    /// in the message: it answers as them only.
    pub token: &'a str,
}

/// The subject and body of a notice.
pub fn compose(cfg: &EmailConfig, n: &Notice<'_>) -> (String, String) {
    let kind = n.request.get("kind").and_then(Value::as_str).unwrap_or("form");
    let title = n.request.get("title").and_then(Value::as_str).unwrap_or(n.step_id);
    let what = if kind == "approval" { "Approval needed" } else { "Input needed" };
    let lead = if n.purpose.starts_with("reminder") { "Reminder: " } else { "" };
    let subject = format!("[Cairn] {lead}{what}: {title}");
    let mut body = format!("Hello {},\n\n", n.identity);
    body.push_str(&format!("Run {} is waiting for you at step `{}`.\n\n{title}\n\n", n.run_id, n.step_id));
    if let Some(d) = n.request.get("deadline").and_then(Value::as_str) {
        body.push_str(&format!("Deadline: {d}\n\n"));
    }
    let link = format!("{}/runs/{}/steps/{}?token={}", cfg.base_url, n.run_id, n.step_id, n.token);
    if kind == "approval" {
        if let Some(c) = n.request.get("content").filter(|c| !c.is_null()) {
            let text = c.as_str().map_or_else(|| serde_json::to_string_pretty(c).unwrap_or_default(), str::to_owned);
            body.push_str(&format!("What you are asked to approve:\n\n{text}\n\n"));
        }
        body.push_str(&format!(
            "Decide here: {link}\nor: cairn approve {run} {step} --as {who} --token {t}   (or: cairn reject …)\n",
            run = n.run_id,
            step = n.step_id,
            who = n.identity,
            t = n.token
        ));
    } else {
        let fields: Vec<&str> = n
            .request
            .get("fields")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        body.push_str(&format!("Fields: {}\n\n", fields.join(", ")));
        body.push_str(&format!(
            "Fill it in here: {link}\nor: cairn submit {run} {step} --as {who} --token {t} --field NAME=VALUE …\n",
            run = n.run_id,
            step = n.step_id,
            who = n.identity,
            t = n.token
        ));
    }
    body.push_str("\nThe token works only for this request; do not forward this message.\n");
    (subject, body)
}

/// Sends one message; returns its Message-ID.
pub async fn send(cfg: &EmailConfig, to: &str, subject: String, body: String) -> Result<Option<String>, String> {
    let from = cfg.from.parse().map_err(|e| format!("email.from `{}` is not an address: {e}", cfg.from))?;
    let to_addr = to.parse().map_err(|e| format!("`{to}` is not an email address: {e}"))?;
    let message = Message::builder()
        .from(from)
        .to(to_addr)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let message_id =
        message.headers().get_raw("Message-ID").map(|v| v.trim_matches(|c| c == '<' || c == '>').to_owned());
    let builder = match cfg.tls.as_str() {
        "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(|e| e.to_string())?,
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(|e| e.to_string())?,
    };
    let mut builder = builder.port(cfg.port).timeout(Some(Duration::from_secs(20)));
    if let Some(user) = &cfg.username {
        let password = cfg.password_env.as_ref().and_then(|v| std::env::var(v).ok()).unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let transport = builder.build();
    transport.send(message).await.map_err(|e| format!("SMTP {}:{} refused or failed: {e}", cfg.host, cfg.port))?;
    Ok(message_id)
}
