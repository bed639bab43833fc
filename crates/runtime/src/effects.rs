//! The runner's effects for AI and human steps: one model call, the record
//! of a request with its token's hash, one notification. Each returns the
//! event that records its outcome; the runner appends it with the expected
//! version.

use std::time::Instant;

use cairn_events::{
    AiAttemptCompleted, AiAttemptFailed, AiAttemptStarted, Cost, Event, NotificationFailed, NotificationSent,
    TokenUsage,
};
use serde_json::Value;
use uuid::Uuid;

use cairn_core::secrets::Secrets;
use cairn_events::clock::ClockHandle;

use crate::provider::{self, Failure, Request};
use cairn_core::config::{OutputMode, ProviderKind};
use cairn_core::decider::bare;
use cairn_core::model::{StepKind, Workflow};

/// What the effects need of the engine's surroundings: the HTTP client,
/// the configuration (providers, e-mail), the secrets to scrub from what is
/// recorded, the key resume tokens are derived under, and the clock.
#[derive(Clone)]
pub(crate) struct Effects {
    pub(crate) http: reqwest::Client,
    pub(crate) config: std::sync::Arc<cairn_core::config::Config>,
    pub(crate) secrets: Secrets,
    pub(crate) token_key: Vec<u8>,
    pub(crate) clock: ClockHandle,
}

impl Effects {
    /// The resume token of a step attempt's form or approval.
    pub(crate) fn resume_token(&self, run_id: Uuid, step: &str, attempt: u32) -> String {
        cairn_core::human::resume_token(&self.token_key, run_id, step, attempt)
    }

    /// Makes one AI attempt: the request is the recorded `AiAttemptStarted`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_model(
        &self,
        w: &Workflow,
        run_id: Uuid,
        step_id: &str,
        number: u32,
        scripted: Vec<Value>,
        request: Value,
        timeout: Option<std::time::Duration>,
    ) -> Event {
        let started = Instant::now();
        let failed = |f: Failure, fallback: Option<OutputMode>, latency_ms: u64| {
            Event::AiAttemptFailed(AiAttemptFailed {
                step_id: step_id.to_owned(),
                attempt: number,
                error_kind: f.kind,
                message: self.secrets.scrub_str(&f.message),
                retryable: f.retryable,
                status: f.status,
                retry_after_ms: f.retry_after_ms,
                latency_ms,
                fallback_mode: fallback.map(|m| m.name().to_owned()),
            })
        };
        let config_error = |message: String| Failure {
            kind: "ai.config".into(),
            message,
            retryable: false,
            status: None,
            retry_after_ms: None,
            mode_rejected: false,
        };
        let req: AiAttemptStarted = match serde_json::from_value(request) {
            Ok(r) => r,
            Err(e) => return failed(config_error(format!("the recorded request does not decode: {e}")), None, 0),
        };
        let Some(p) = self.config.providers.get(&req.provider) else {
            let known: Vec<&str> = self.config.providers.keys().map(String::as_str).collect();
            return failed(
                config_error(format!(
                    "provider `{}` is not configured on this engine ({}); known: {}",
                    req.provider,
                    self.config.source,
                    known.join(", ")
                )),
                None,
                0,
            );
        };
        let mode = req.params.mode.as_deref().and_then(OutputMode::parse).unwrap_or(OutputMode::None);
        let schema = w.step(bare(step_id)).and_then(|s| s.output_contract.as_ref());
        let scripted = if scripted.is_empty() && p.kind == ProviderKind::Scripted {
            p.replies.get(bare(step_id)).cloned().unwrap_or_default()
        } else {
            scripted
        };
        let key = format!("{run_id}:{step_id}:ai{number}");
        let r = Request {
            model: &req.model,
            messages: &req.messages,
            mode,
            schema,
            temperature: req.params.temperature,
            max_output_tokens: req.params.max_output_tokens,
            idempotency_key: &key,
        };
        let call = provider::call(&self.http, p, &r, &scripted, number);
        let outcome = match timeout {
            Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| {
                Err(Failure {
                    kind: "ai.timeout".into(),
                    message: format!("the model did not answer within the step's timeout of {t:?}"),
                    retryable: true,
                    status: None,
                    retry_after_ms: None,
                    mode_rejected: false,
                })
            }),
            None => call.await,
        };
        let latency_ms = provider::elapsed_ms(started);
        match outcome {
            Ok(reply) => {
                let cost = req.params.price.as_ref().map(|pr| {
                    let price = cairn_core::config::Price {
                        input_per_million: pr.input_per_million,
                        output_per_million: pr.output_per_million,
                        currency: pr.currency.clone(),
                        table: pr.table.clone(),
                    };
                    Cost {
                        micros: price.micros(reply.input_tokens, reply.output_tokens),
                        currency: price.currency,
                        price_table: price.table,
                    }
                });
                Event::AiAttemptCompleted(AiAttemptCompleted {
                    step_id: step_id.to_owned(),
                    attempt: number,
                    raw_output: self.secrets.scrub_str(&reply.raw),
                    usage: TokenUsage { input_tokens: reply.input_tokens, output_tokens: reply.output_tokens },
                    cost,
                    latency_ms,
                    finish_reason: reply.finish_reason,
                })
            }
            Err(mut f) => {
                let fallback = if f.mode_rejected { mode.weaker() } else { None };
                if f.mode_rejected && fallback.is_none() {
                    f.kind = "ai.status".into();
                }
                if let Some(m) = fallback {
                    f.message = format!(
                        "{} — the server refused structured output `{}`; next: `{}`",
                        f.message,
                        mode.name(),
                        m.name()
                    );
                }
                failed(f, fallback, latency_ms)
            }
        }
    }

    /// Records a form's or approval's request, with the hash of the token
    /// derived for this step attempt.
    pub(crate) fn request(
        &self,
        w: &Workflow,
        run_id: Uuid,
        step_id: &str,
        attempt: u32,
        input: &Value,
    ) -> Option<Event> {
        let kind = &w.step(bare(step_id))?.kind;
        if !matches!(kind, StepKind::Form(_) | StepKind::Approval(_)) {
            return None;
        }
        let hash = cairn_core::human::token_hash(&self.resume_token(run_id, step_id, attempt));
        cairn_core::decider::request_event(step_id, kind, input, hash)
    }

    /// Sends one notification and records how it went.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn notify(
        &self,
        run_id: Uuid,
        step_id: &str,
        attempt: u32,
        purpose: &str,
        identity: &str,
        address: &str,
        send_attempt: u32,
        request: &Value,
    ) -> Event {
        let Some(cfg) = &self.config.email else {
            return Event::NotificationFailed(NotificationFailed {
                step_id: step_id.to_owned(),
                channel: "email".into(),
                recipient: address.to_owned(),
                purpose: purpose.to_owned(),
                attempt: send_attempt,
                error: "email is not configured on this engine; add `email:` to cairn.yaml".into(),
                retry_at: None,
            });
        };
        // The recipient's own token: it answers as them only.
        let token = cairn_core::human::answer_token(&self.token_key, run_id, step_id, attempt, identity);
        let notice = crate::notify::Notice { run_id, step_id, purpose, identity, request, token: &token };
        let (subject, body) = crate::notify::compose(cfg, &notice);
        match crate::notify::send(cfg, address, subject, body).await {
            Ok(message_id) => Event::NotificationSent(NotificationSent {
                step_id: step_id.to_owned(),
                channel: "email".into(),
                recipient: address.to_owned(),
                message_id,
                purpose: purpose.to_owned(),
                identity: Some(identity.to_owned()),
            }),
            Err(error) => {
                tracing::warn!(%run_id, step_id, recipient = address, attempt = send_attempt, %error, "a notification was not sent");
                let retry_at = (send_attempt < cfg.max_attempts).then(|| {
                    let wait = cfg.retry_interval.saturating_mul(1 << (send_attempt - 1).min(16));
                    self.clock.now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero())
                });
                Event::NotificationFailed(NotificationFailed {
                    step_id: step_id.to_owned(),
                    channel: "email".into(),
                    recipient: address.to_owned(),
                    purpose: purpose.to_owned(),
                    attempt: send_attempt,
                    error,
                    retry_at,
                })
            }
        }
    }
}
