//! The engine's surroundings, as opposed to a workflow's definition: the AI
//! providers and models a step's `model:` resolves to (with their prices),
//! the email channel notifications go through, and the people identities
//! stand for. Read from `cairn.yaml`; every field is optional and the
//! built-in providers (`scripted`, `openai`, `anthropic`, `ollama`) need no
//! file at all.
//!
//! The decider reads a [`Config`] as data (which model a step calls, what an
//! attempt may cost, whom to notify); nothing here does I/O except
//! [`Config::load`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::duration::parse_duration;

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp
    /// servers and the like).
    Openai,
    /// Anthropic messages.
    Anthropic,
    /// Deterministic replies from the workflow or this config.
    Scripted,
}

impl ProviderKind {
    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Scripted => "scripted",
        }
    }
}

/// How a model is asked to answer in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutputMode {
    /// The output contract is sent as a JSON Schema the server enforces.
    JsonSchema,
    /// The server is asked for some JSON object; the schema goes in the prompt.
    JsonObject,
    /// Plain text; the schema goes in the prompt.
    None,
}

impl OutputMode {
    /// The mode's name in config and events.
    pub fn name(self) -> &'static str {
        match self {
            OutputMode::JsonSchema => "json_schema",
            OutputMode::JsonObject => "json_object",
            OutputMode::None => "none",
        }
    }

    /// Parses a mode name.
    pub fn parse(s: &str) -> Option<OutputMode> {
        match s {
            "json_schema" => Some(OutputMode::JsonSchema),
            "json_object" => Some(OutputMode::JsonObject),
            "none" => Some(OutputMode::None),
            _ => None,
        }
    }

    /// The mode to fall back to when a server rejects this one.
    pub fn weaker(self) -> Option<OutputMode> {
        match self {
            OutputMode::JsonSchema => Some(OutputMode::JsonObject),
            OutputMode::JsonObject => Some(OutputMode::None),
            OutputMode::None => None,
        }
    }
}

/// A provider: where requests go and how they authenticate.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL: `…/v1` for OpenAI-compatible servers, the host for Anthropic.
    pub base_url: String,
    /// The environment variable holding the API key, if one is needed.
    pub api_key_env: Option<String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Request timeout.
    pub timeout: Duration,
    /// Scripted replies by step id (scripted providers only).
    pub replies: BTreeMap<String, Vec<Value>>,
}

/// A model's price per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input_per_million: f64,
    /// Per million output (completion) tokens.
    pub output_per_million: f64,
    /// ISO 4217 currency.
    pub currency: String,
    /// The price table it came from.
    pub table: String,
}

impl Price {
    /// The cost of a token count, in millionths of the currency.
    pub fn micros(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        // price per million tokens × tokens = micro-units × 10⁰: one
        // currency unit per million tokens is one micro-unit per token.
        let m = self.input_per_million * input_tokens as f64 + self.output_per_million * output_tokens as f64;
        if m.is_finite() && m > 0.0 { m.round() as u64 } else { 0 }
    }
}

/// What a step's `model:` resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name the step wrote.
    pub alias: String,
    /// Provider name.
    pub provider: String,
    /// Its wire protocol.
    pub kind: ProviderKind,
    /// The model name sent to the provider.
    pub model: String,
    /// The structured-output mode asked for first.
    pub mode: OutputMode,
    /// Its price, when known.
    pub price: Option<Price>,
}

/// The SMTP channel.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// SMTP host.
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: String,
    /// Login, if the server wants one.
    pub username: Option<String>,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// The From address.
    pub from: String,
    /// Where links in messages point (the `cairn serve` address).
    pub base_url: String,
    /// Send attempts before giving up on one message.
    pub max_attempts: u32,
    /// First wait before a resend; doubles each time.
    pub retry_interval: Duration,
}

/// A person an identity stands for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Person {
    /// Where notifications go.
    pub email: Option<String>,
}

/// The engine's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Providers by name, the built-ins included.
    pub providers: BTreeMap<String, Provider>,
    /// Model aliases.
    pub models: BTreeMap<String, ModelEntry>,
    /// `CAIRN_MODEL_<ALIAS>=provider/model` overrides, read from the environment.
    pub overrides: BTreeMap<String, String>,
    /// The name recorded with every cost.
    pub price_table: String,
    /// The email channel, if notifications are on.
    pub email: Option<EmailConfig>,
    /// People by identity.
    pub people: BTreeMap<String, Person>,
    /// The identity `cairn` acts as when `--as` is not given.
    pub identity: Option<String>,
    /// Where this came from, for messages.
    pub source: String,
    /// Prompt templates by `ID@VERSION`.
    pub prompts: BTreeMap<String, PromptTemplate>,
    /// The directory they were read from.
    pub prompts_dir: String,
    /// The key resume tokens are derived with (never logged).
    pub token_key: Vec<u8>,
    /// The limits on what runs record (`limits:`; only lower than the defaults).
    pub limits: cairn_events::limits::Limits,
}

/// A model alias in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Provider name.
    pub provider: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Price per million input tokens.
    #[serde(default)]
    pub input_per_million: Option<f64>,
    /// Price per million output tokens.
    #[serde(default)]
    pub output_per_million: Option<f64>,
    /// Currency of the prices (default `USD`).
    #[serde(default)]
    pub currency: Option<String>,
    /// `json_schema`, `json_object` or `none` (default `json_schema`).
    #[serde(default)]
    pub structured_output: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    price_table: Option<String>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
    #[serde(default)]
    email: Option<RawEmail>,
    #[serde(default)]
    people: BTreeMap<String, RawPerson>,
    #[serde(default)]
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_depth: Option<usize>,
    #[serde(default)]
    max_string_bytes: Option<usize>,
    #[serde(default)]
    max_event_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: ProviderKind,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    replies: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_env: Option<String>,
    from: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    retry_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    #[serde(default)]
    email: Option<String>,
}

/// A problem with the config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// The file.
    pub source_name: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn builtin_providers() -> BTreeMap<String, Provider> {
    let p = |kind, base: &str, key: Option<&str>| Provider {
        kind,
        base_url: base.to_owned(),
        api_key_env: key.map(str::to_owned),
        headers: BTreeMap::new(),
        timeout: Duration::from_secs(120),
        replies: BTreeMap::new(),
    };
    BTreeMap::from([
        ("scripted".to_owned(), p(ProviderKind::Scripted, "", None)),
        ("openai".to_owned(), p(ProviderKind::Openai, "https://api.openai.com/v1", Some("OPENAI_API_KEY"))),
        ("anthropic".to_owned(), p(ProviderKind::Anthropic, "https://api.anthropic.com", Some("ANTHROPIC_API_KEY"))),
        ("ollama".to_owned(), p(ProviderKind::Openai, "http://127.0.0.1:11434/v1", None)),
    ])
}

impl Default for Config {
    fn default() -> Self {
        Config {
            providers: builtin_providers(),
            models: BTreeMap::new(),
            overrides: BTreeMap::new(),
            price_table: "cairn.yaml".into(),
            email: None,
            people: BTreeMap::new(),
            identity: None,
            source: "built-in defaults".into(),
            prompts: BTreeMap::new(),
            prompts_dir: "prompts".into(),
            token_key: Vec::new(),
            limits: cairn_events::limits::Limits::default(),
        }
    }
}

/// The environment variable prefix of model overrides.
pub const MODEL_OVERRIDE_PREFIX: &str = "CAIRN_MODEL_";

impl Config {
    /// Parses a config file's text. `name` names it in errors.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { source_name: name.to_owned(), message };
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let at = e.location().map(|l| format!("line {} column {}: ", l.line(), l.column())).unwrap_or_default();
                err(format!("{at}{}", e.to_string().lines().next().unwrap_or("invalid YAML")))
            })?
        };
        let mut c = Config { source: name.to_owned(), ..Config::default() };
        c.identity = raw.identity;
        if let Some(t) = raw.price_table {
            c.price_table = t;
        }
        for (pname, p) in raw.providers {
            let base_url = match (p.base_url, p.kind) {
                (Some(u), _) => u.trim_end_matches('/').to_owned(),
                (None, ProviderKind::Scripted) => String::new(),
                (None, _) => {
                    return Err(err(format!("provider `{pname}` needs `base_url`, e.g. http://127.0.0.1:8000/v1")));
                }
            };
            let timeout = match p.timeout {
                Some(t) => parse_duration(&t).map_err(|e| err(format!("provider `{pname}` timeout: {e}")))?,
                None => Duration::from_secs(120),
            };
            c.providers.insert(
                pname,
                Provider {
                    kind: p.kind,
                    base_url,
                    api_key_env: p.api_key_env,
                    headers: p.headers,
                    timeout,
                    replies: p.replies,
                },
            );
        }
        for (alias, m) in &raw.models {
            if !c.providers.contains_key(&m.provider) {
                let known: Vec<&str> = c.providers.keys().map(String::as_str).collect();
                return Err(err(format!(
                    "model `{alias}` names provider `{}`, which is not defined; known providers: {}",
                    m.provider,
                    known.join(", ")
                )));
            }
            if let Some(mode) = &m.structured_output
                && OutputMode::parse(mode).is_none()
            {
                return Err(err(format!(
                    "model `{alias}`: structured_output `{mode}` is not one of json_schema, json_object, none"
                )));
            }
            for (what, v) in [("input_per_million", m.input_per_million), ("output_per_million", m.output_per_million)]
            {
                if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(err(format!("model `{alias}`: {what} must be a price of 0 or more")));
                }
            }
        }
        c.models = raw.models;
        if let Some(e) = raw.email {
            let tls = e.tls.unwrap_or_else(|| "starttls".into());
            if !["none", "starttls", "tls"].contains(&tls.as_str()) {
                return Err(err(format!("email.tls `{tls}` is not one of none, starttls, tls")));
            }
            let retry_interval = match e.retry_interval {
                Some(t) => parse_duration(&t).map_err(|x| err(format!("email.retry_interval: {x}")))?,
                None => Duration::from_secs(30),
            };
            let port = e.port.unwrap_or(match tls.as_str() {
                "tls" => 465,
                "starttls" => 587,
                _ => 25,
            });
            c.email = Some(EmailConfig {
                host: e.host,
                port,
                tls,
                username: e.username,
                password_env: e.password_env,
                from: e.from,
                base_url: e.base_url.unwrap_or_else(|| "http://127.0.0.1:8080".into()).trim_end_matches('/').to_owned(),
                max_attempts: e.max_attempts.unwrap_or(5).max(1),
                retry_interval,
            });
        }
        c.people = raw.people.into_iter().map(|(k, p)| (k, Person { email: p.email })).collect();
        if let Some(l) = raw.limits {
            c.limits = cairn_events::limits::Limits::lowered(l.max_depth, l.max_string_bytes, l.max_event_bytes)
                .map_err(err)?;
        }
        Ok(c)
    }

    /// Reads a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { source_name: name.clone(), message: format!("cannot read it: {e}") })?;
        Config::parse(&text, &name)
    }

    /// Reads every `ID@VERSION.yaml` in `dir` as a prompt template (a
    /// missing directory is no templates). A template is `system` and
    /// `prompt`, or `messages: [{role, content}]`, all templates.
    pub fn load_prompts(&mut self, dir: &std::path::Path) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawTemplate {
            #[serde(default)]
            #[allow(dead_code)]
            description: Option<String>,
            #[serde(default)]
            system: Option<String>,
            #[serde(default)]
            prompt: Option<String>,
            #[serde(default)]
            messages: Vec<RawMsg>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawMsg {
            role: String,
            content: String,
        }
        self.prompts_dir = dir.display().to_string();
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let name = path.display().to_string();
            let err = |message: String| ConfigError { source_name: name.clone(), message };
            let Some(stem) = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".yaml")) else {
                continue;
            };
            if !stem.split_once('@').is_some_and(|(i, v)| !i.is_empty() && v.parse::<u32>().is_ok_and(|v| v > 0)) {
                return Err(err("a prompt template's file name is ID@VERSION.yaml, e.g. blog-draft@2.yaml".into()));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read it: {e}")))?;
            let raw: RawTemplate = serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?;
            let mut messages: Vec<(String, String)> = Vec::new();
            messages.extend(raw.system.map(|s| ("system".to_owned(), s)));
            messages.extend(raw.prompt.map(|s| ("user".to_owned(), s)));
            for m in raw.messages {
                if !["system", "user", "assistant"].contains(&m.role.as_str()) {
                    return Err(err(format!("message role `{}` is not system, user or assistant", m.role)));
                }
                messages.push((m.role, m.content));
            }
            if messages.is_empty() {
                return Err(err("the template has no `prompt` or `messages`".into()));
            }
            for (_, t) in &messages {
                crate::template::check_with(&Value::String(t.clone()), &["vars"]).map_err(|e| err(e.to_string()))?;
            }
            let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
            self.prompts.insert(stem.to_owned(), PromptTemplate { messages, sha256 });
        }
        Ok(())
    }

    /// Adds the `CAIRN_MODEL_<ALIAS>` overrides found in `vars`.
    pub fn with_overrides(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        for (k, v) in vars {
            if let Some(alias) = k.strip_prefix(MODEL_OVERRIDE_PREFIX)
                && !alias.is_empty()
                && !v.trim().is_empty()
            {
                self.overrides.insert(alias.to_ascii_uppercase(), v.trim().to_owned());
            }
        }
        self
    }

    /// What `model:` resolves to. `scripted` says the step has scripted
    /// replies, which makes an unconfigured alias run on the scripted
    /// provider. In order: a `CAIRN_MODEL_<ALIAS>` override, a `models:`
    /// entry, `provider/model`, then `scripted`.
    pub fn resolve(&self, alias: &str, scripted: bool) -> Result<ModelSpec, String> {
        let key = alias.to_ascii_uppercase().replace('-', "_");
        let (written, via) = match self.overrides.get(&key) {
            Some(o) => (o.as_str(), Some(format!("{MODEL_OVERRIDE_PREFIX}{key}"))),
            None => (alias, None),
        };
        if via.is_none()
            && let Some(m) = self.models.get(alias)
        {
            return self.spec(alias, &m.provider, &m.model, Some(m));
        }
        if let Some((provider, model)) = written.split_once('/') {
            if !self.providers.contains_key(provider) {
                let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                let from = via.map(|v| format!(" (from {v})")).unwrap_or_default();
                return Err(format!(
                    "`{written}`{from}: no provider `{provider}`; known providers: {}",
                    known.join(", ")
                ));
            }
            let entry = self.models.values().find(|m| m.provider == provider && m.model == model);
            return self.spec(alias, provider, model, entry);
        }
        if via.is_some() {
            return self.resolve(written, scripted).map(|mut s| {
                s.alias = alias.to_owned();
                s
            });
        }
        if alias == "scripted" || scripted {
            return self.spec(alias, "scripted", alias, None);
        }
        let mut known: Vec<String> = self.models.keys().cloned().collect();
        known.push("PROVIDER/MODEL (e.g. openai/gpt-4o-mini)".into());
        Err(format!(
            "no model `{alias}` in {}; known: {} — add it under `models:` in cairn.yaml, set {MODEL_OVERRIDE_PREFIX}{key}=provider/model, or give the step `scripted` replies",
            self.source,
            known.join(", ")
        ))
    }

    fn spec(&self, alias: &str, provider: &str, model: &str, entry: Option<&ModelEntry>) -> Result<ModelSpec, String> {
        let p = self.providers.get(provider).ok_or_else(|| format!("model `{alias}`: no provider `{provider}`"))?;
        let mode = entry
            .and_then(|e| e.structured_output.as_deref())
            .and_then(OutputMode::parse)
            .unwrap_or(OutputMode::JsonSchema);
        let price = entry.and_then(|e| match (e.input_per_million, e.output_per_million) {
            (None, None) => None,
            (i, o) => Some(Price {
                input_per_million: i.unwrap_or(0.0),
                output_per_million: o.unwrap_or(0.0),
                currency: e.currency.clone().unwrap_or_else(|| "USD".into()),
                table: self.price_table.clone(),
            }),
        });
        Ok(ModelSpec {
            alias: alias.to_owned(),
            provider: provider.to_owned(),
            kind: p.kind,
            model: model.to_owned(),
            mode,
            price,
        })
    }

    /// The environment variable a provider's key should be in, when it is
    /// needed and not set.
    pub fn missing_api_key(&self, provider: &str) -> Option<String> {
        let var = self.providers.get(provider)?.api_key_env.as_ref()?;
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => None,
            _ => Some(var.clone()),
        }
    }

    /// The email address notifications for `identity` go to: the person's
    /// `email`, or the identity itself when it is an address.
    pub fn email_of(&self, identity: &str) -> Option<String> {
        match self.people.get(identity).and_then(|p| p.email.clone()) {
            Some(e) => Some(e),
            None if identity.contains('@') => Some(identity.to_owned()),
            None => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let c = Config::parse(
            "models:\n  writer: { provider: openai, model: gpt-4o-mini, input_per_million: 0.15, output_per_million: 0.6 }\n",
            "t",
        )
        .unwrap();
        let w = c.resolve("writer", false).unwrap();
        assert_eq!((w.provider.as_str(), w.model.as_str()), ("openai", "gpt-4o-mini"));
        assert_eq!(w.price.as_ref().map(|p| p.micros(1_000_000, 0)), Some(150_000));
        let o = c.clone().with_overrides([("CAIRN_MODEL_WRITER".into(), "ollama/llama3.2".into())]);
        let w = o.resolve("writer", true).unwrap();
        assert_eq!((w.provider.as_str(), w.model.as_str(), w.kind), ("ollama", "llama3.2", ProviderKind::Openai));
        assert_eq!(c.resolve("drafter", true).unwrap().kind, ProviderKind::Scripted);
        let e = c.resolve("drafter", false).unwrap_err();
        assert!(e.contains("CAIRN_MODEL_DRAFTER"), "{e}");
        assert!(c.resolve("nope/x", false).unwrap_err().contains("no provider `nope`"));
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let e = Config::parse("models:\n  w: { provider: nowhere, model: m }\n", "c.yaml").unwrap_err();
        assert!(e.to_string().contains("provider `nowhere`, which is not defined"), "{e}");
        let e = Config::parse("providers:\n  x: { kind: openai }\n", "c.yaml").unwrap_err();
        assert!(e.message.contains("needs `base_url`"), "{e}");
        let e = Config::parse("modles: {}\n", "c.yaml").unwrap_err();
        assert!(e.message.contains("modles"), "{e}");
    }
}

/// A versioned prompt template (`prompts/<id>@<version>.yaml`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    /// `(role, template)` pairs.
    pub messages: Vec<(String, String)>,
    /// SHA-256 of the file, hex: recorded with every use.
    pub sha256: String,
}
