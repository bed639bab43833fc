//! What a run's decisions take from the engine's configuration: resolved
//! once when the run starts and recorded in `RunStarted.settings`
//! ([`resolve`]), then read by the decider from the run's state
//! ([`Surroundings`]). A replay therefore reads only the log and the pinned
//! definition; changing `cairn.yaml` (a price, a model alias, a prompt file,
//! an address) changes runs started afterwards, never a recorded one.
//! Runs recorded before settings were read the configuration live.

use cairn_events::{EmailSettings, PriceRecord, RecordedPrompt, ResolvedModel, RunSettings};

use crate::config::{Config, ModelSpec, OutputMode, Price, ProviderKind};
use crate::model::{StepKind, Workflow};

/// The settings a run of `w` records: `None` when it has no AI, form or
/// approval step (nothing it decides depends on the configuration).
pub fn resolve(w: &Workflow, config: &Config) -> Option<RunSettings> {
    let people = w
        .index
        .values()
        .map(|(s, _)| s)
        .chain(&w.compensations)
        .any(|s| matches!(s.kind, StepKind::Form(_) | StepKind::Approval(_)));
    let limits = (config.limits != cairn_events::limits::Limits::default()).then_some(config.limits);
    if w.model_refs.is_empty() && !people && limits.is_none() {
        return None;
    }
    let mut out = RunSettings { limits, ..RunSettings::default() };
    for r in &w.model_refs {
        let m = match config.resolve(&r.model, r.scripted) {
            Ok(spec) => ResolvedModel {
                alias: r.model.clone(),
                provider: Some(spec.provider),
                kind: Some(spec.kind.name().to_owned()),
                model: Some(spec.model),
                mode: Some(spec.mode.name().to_owned()),
                price: spec.price.map(|p| PriceRecord {
                    input_per_million: p.input_per_million,
                    output_per_million: p.output_per_million,
                    currency: p.currency,
                    table: p.table,
                }),
                error: None,
            },
            Err(e) => ResolvedModel { alias: r.model.clone(), error: Some(e), ..ResolvedModel::default() },
        };
        out.models.insert(r.step.clone(), m);
        if let Some(t) = &r.template
            && let Some(p) = config.prompts.get(t)
        {
            let messages = p
                .messages
                .iter()
                .map(|(role, content)| cairn_events::AiMessage { role: role.clone(), content: content.clone() })
                .collect();
            out.prompts.insert(t.clone(), RecordedPrompt { sha256: p.sha256.clone(), messages });
        }
    }
    if people && let Some(email) = &config.email {
        out.email = Some(EmailSettings {
            max_attempts: email.max_attempts,
            addresses: config.people.iter().filter_map(|(id, p)| Some((id.clone(), p.email.clone()?))).collect(),
        });
    }
    Some(out)
}

/// Where the decider reads what it takes from the configuration: the
/// run's recorded settings, or (for a run recorded before them) the
/// engine's configuration.
pub(crate) enum Surroundings<'a> {
    /// Recorded when the run started.
    Recorded(&'a RunSettings, &'a Config),
    /// Read live (runs recorded before settings were).
    Live(&'a Config),
}

impl<'a> Surroundings<'a> {
    /// The surroundings of a run of `w` that recorded `settings` (its
    /// `RunState::settings`).
    pub(crate) fn of(w: &'a Workflow, settings: Option<&'a RunSettings>) -> Surroundings<'a> {
        match settings {
            Some(r) => Surroundings::Recorded(r, &w.config),
            None => Surroundings::Live(&w.config),
        }
    }

    /// The model AI step `step` (its id) asks for as `alias`.
    pub(crate) fn model(&self, step: &str, alias: &str, scripted: bool) -> Result<ModelSpec, String> {
        let r = match self {
            Surroundings::Live(c) => return c.resolve(alias, scripted),
            Surroundings::Recorded(r, _) => r,
        };
        let Some(m) = r.models.get(step) else {
            return Err(format!("the model of step `{step}` was not resolved when the run started"));
        };
        if let Some(e) = &m.error {
            return Err(e.clone());
        }
        let kind = match m.kind.as_deref() {
            Some("anthropic") => ProviderKind::Anthropic,
            Some("scripted") => ProviderKind::Scripted,
            _ => ProviderKind::Openai,
        };
        Ok(ModelSpec {
            alias: m.alias.clone(),
            provider: m.provider.clone().unwrap_or_default(),
            kind,
            model: m.model.clone().unwrap_or_default(),
            mode: m.mode.as_deref().and_then(OutputMode::parse).unwrap_or(OutputMode::JsonSchema),
            price: m.price.as_ref().map(|p| Price {
                input_per_million: p.input_per_million,
                output_per_million: p.output_per_million,
                currency: p.currency.clone(),
                table: p.table.clone(),
            }),
        })
    }

    /// A prompt template's `(role, template)` messages and file hash.
    pub(crate) fn prompt(&self, key: &str) -> Result<(Vec<(String, String)>, String), String> {
        match self {
            Surroundings::Recorded(r, c) => r
                .prompts
                .get(key)
                .map(|p| (p.messages.iter().map(|m| (m.role.clone(), m.content.clone())).collect(), p.sha256.clone()))
                .ok_or_else(|| format!("no prompt template `{key}` in {} when the run started", c.prompts_dir)),
            Surroundings::Live(c) => c
                .prompts
                .get(key)
                .map(|t| (t.messages.clone(), t.sha256.clone()))
                .ok_or_else(|| format!("no prompt template `{key}` in {} on this engine", c.prompts_dir)),
        }
    }

    /// The limits on what the run records: those recorded when it started
    /// (the defaults unless lowered then). Never read live, so changing
    /// `cairn.yaml` changes no recorded run's decisions.
    pub(crate) fn limits(&self) -> cairn_events::limits::Limits {
        match self {
            Surroundings::Recorded(r, _) => r.limits.unwrap_or_default(),
            Surroundings::Live(_) => cairn_events::limits::Limits::default(),
        }
    }

    /// Most send attempts per notification; `None` when no email is sent.
    pub(crate) fn email_max_attempts(&self) -> Option<u32> {
        match self {
            Surroundings::Recorded(r, _) => r.email.as_ref().map(|e| e.max_attempts),
            Surroundings::Live(c) => c.email.as_ref().map(|e| e.max_attempts),
        }
    }

    /// The address notifications for `identity` go to: the person's
    /// address, or the identity itself when it is an address.
    pub(crate) fn email_of(&self, identity: &str) -> Option<String> {
        match self {
            Surroundings::Recorded(r, _) => match r.email.as_ref().and_then(|e| e.addresses.get(identity)) {
                Some(a) => Some(a.clone()),
                None if identity.contains('@') => Some(identity.to_owned()),
                None => None,
            },
            Surroundings::Live(c) => c.email_of(identity),
        }
    }
}
