//! Webhook triggers: `POST /hooks/<name>` starts a run of a workflow when
//! the delivery's signature (GitHub or Stripe style, with a secret named in
//! the definition and held only in the environment) matches its body. The
//! body and headers are mapped to the run's inputs by a template; the
//! delivery id is the run's idempotency key, so a delivery sent again (a
//! provider's retry, an attacker's replay) starts nothing new. A trigger is
//! a stream (`trigger-<name>`).

use std::collections::BTreeMap;

use cairn_core::trigger;
use cairn_events::{Event, ExpectedVersion, Metadata, NewEvent, TriggerDefined, TriggerDeleted, trigger_stream};
use serde_json::Value;
use uuid::Uuid;

use crate::{Engine, RunError, Start};

/// What defining a trigger asks for.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    /// Its name (the hook's path): letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The workflow each delivery starts.
    pub workflow: String,
    /// A version to pin, or none for the latest at each delivery.
    pub workflow_version: Option<u32>,
    /// The inputs template over `body` and `headers`.
    pub inputs: Value,
    /// `github` or `stripe`.
    pub signature: String,
    /// The signing secret's name (`CAIRN_SECRET_<NAME>`).
    pub secret: String,
    /// Where the delivery id is (default by style).
    pub delivery_id: Option<String>,
    /// Oldest a signed timestamp may be, in seconds (`stripe`; default 300).
    pub tolerance_seconds: Option<u64>,
}

/// A delivery that started a run, or found the run its id started.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The run.
    pub run_id: Uuid,
    /// The delivery id.
    pub delivery_id: String,
    /// Started by this delivery (false: a delivery with this id did before).
    pub started: bool,
}

fn refused(code: &'static str, message: impl Into<String>) -> RunError {
    RunError::Refused { code, message: message.into() }
}

impl Engine {
    /// A trigger's definition, unless it was never defined or was deleted.
    pub async fn trigger(&self, name: &str) -> Result<Option<TriggerDefined>, RunError> {
        let mut current = None;
        for r in self.store.read_stream(&trigger_stream(name), 1).await? {
            match Event::decode(&r)? {
                Event::TriggerDefined(d) => current = Some(d),
                Event::TriggerDeleted(_) => current = None,
                _ => {}
            }
        }
        Ok(current)
    }

    /// Defines a trigger, or redefines one. The style, the delivery-id
    /// place, the inputs template, the workflow and the secret's presence
    /// in this process are checked first: nothing is recorded when one is
    /// wrong.
    pub async fn define_trigger(&self, r: TriggerRequest, by: &str) -> Result<TriggerDefined, RunError> {
        let bad = |m: String| refused("invalid-trigger", m);
        crate::error::check_name("trigger", &r.name, "invalid-trigger")?;
        let delivery_id = r.delivery_id.clone().unwrap_or_else(|| trigger::default_delivery_id(&r.signature).into());
        trigger::check(&r.signature, &delivery_id, &r.inputs).map_err(bad)?;
        if self.fx.secrets.get(&r.secret).is_none() {
            return Err(bad(format!(
                "no secret `{}` in this process: set CAIRN_SECRET_{} (or add it to --secrets-file) where the hook is served",
                r.secret, r.secret
            )));
        }
        let Some(latest) = self.latest_version(&r.workflow).await? else {
            return Err(bad(format!("no workflow named `{}` is published; publish it first", r.workflow)));
        };
        if let Some(v) = r.workflow_version
            && (v == 0 || v > latest)
        {
            return Err(bad(format!("workflow `{}` has versions 1 to {latest}, not {v}", r.workflow)));
        }
        let d = TriggerDefined {
            name: r.name.clone(),
            workflow: r.workflow,
            workflow_version: r.workflow_version,
            inputs: r.inputs,
            signature: r.signature,
            secret: r.secret,
            delivery_id,
            tolerance_seconds: r.tolerance_seconds.unwrap_or(trigger::DEFAULT_TOLERANCE_SECONDS),
            defined_at: self.fx.clock.now(),
            by: by.to_owned(),
        };
        let stream = trigger_stream(&r.name);
        let version = self.store.stream_version(&stream).await?;
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
        let e = Event::TriggerDefined(d.clone());
        self.store.append(&stream, expected, vec![NewEvent::from_event(&e, Metadata::by(by))]).await?;
        Ok(d)
    }

    /// Deletes a trigger: its hook answers `unknown-trigger` from now on.
    pub async fn delete_trigger(&self, name: &str, by: &str) -> Result<(), RunError> {
        if self.trigger(name).await?.is_none() {
            return Err(refused("unknown-trigger", format!("no trigger named `{name}`")));
        }
        let stream = trigger_stream(name);
        let version = self.store.stream_version(&stream).await?;
        let e = Event::TriggerDeleted(TriggerDeleted { by: by.to_owned() });
        self.store
            .append(&stream, ExpectedVersion::Exact(version), vec![NewEvent::from_event(&e, Metadata::by(by))])
            .await?;
        Ok(())
    }

    /// A delivery to `POST /hooks/<name>`: verifies its signature, finds its
    /// id, maps its inputs and starts the run (once per delivery id; with
    /// `drive`, held by this worker, which drives it next).
    /// `headers` have lowercase names. Refusals: `unknown-trigger`,
    /// `bad-signature` (recorded by the caller as a refused request),
    /// `bad-delivery` (no id, inputs that do not map), and the start's own
    /// (`invalid-inputs`, `workflow-archived` as `invalid-state`).
    pub async fn deliver(
        &self,
        name: &str,
        headers: &BTreeMap<String, String>,
        body: &[u8],
        drive: bool,
    ) -> Result<(Delivered, crate::run::RunState), RunError> {
        let Some(d) = self.trigger(name).await? else {
            return Err(refused("unknown-trigger", format!("no webhook trigger named `{name}`")));
        };
        let secret = self.fx.secrets.get(&d.secret).ok_or_else(|| {
            tracing::error!(trigger = name, secret = %d.secret, "the trigger's secret is not set in this process");
            refused("bad-signature", "the hook cannot check signatures here (its secret is not set on this server)")
        })?;
        trigger::verify(&d.signature, secret, headers, body, self.fx.clock.now(), d.tolerance_seconds)
            .map_err(|e| refused("bad-signature", e))?;
        let value = trigger::body_value(body);
        let id = trigger::delivery_id(&d.delivery_id, headers, &value).map_err(|e| refused("bad-delivery", e))?;
        let inputs = trigger::inputs(&d.inputs, &value, headers).map_err(|e| refused("bad-delivery", e))?;
        let version = match d.workflow_version {
            Some(v) => v,
            None => self
                .latest_version(&d.workflow)
                .await?
                .ok_or_else(|| refused("bad-delivery", format!("workflow `{}` is not published", d.workflow)))?,
        };
        let w = self.definition(&d.workflow, version).await?;
        let by = format!("hook:{name}");
        let run_id = Start::idempotent_id(&by, &id);
        if self.store.stream_version(&cairn_events::run_stream(run_id)).await? > 0 {
            let s = self.state(run_id).await?;
            return Ok((Delivered { run_id, delivery_id: id, started: false }, s));
        }
        let events = self.store.read_stream(&cairn_events::workflow_stream(&d.workflow), 1).await?;
        if events.iter().any(|e| e.event_type == "WorkflowArchived") {
            return Err(refused(
                "bad-delivery",
                format!("workflow `{}` is archived and takes no new runs", d.workflow),
            ));
        }
        let opts = Start { run_id: Some(run_id), idempotency_key: Some(id.clone()), drive, trace_parent: None };
        match self.start_with(&w, version, inputs, &by, opts).await {
            Ok((run_id, s)) => Ok((Delivered { run_id, delivery_id: id, started: true }, s)),
            // The same delivery at the same moment: the other started it.
            Err(RunError::Store(e)) if e.is_conflict() => {
                let s = self.state(run_id).await?;
                Ok((Delivered { run_id, delivery_id: id, started: false }, s))
            }
            Err(e) => Err(e),
        }
    }
}
