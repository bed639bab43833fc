//! Secrets: values from the environment (`CAIRN_SECRET_<NAME>`) or a file,
//! used in templates as `{{ secrets.NAME }}`. The decider only ever sees a
//! placeholder, so recorded inputs hold `[redacted:NAME]`; the runner renders
//! the real value just before the effect, and scrubs any secret value out of
//! what it records afterwards.

use std::collections::BTreeMap;

use serde_json::Value;

/// The prefix of secret environment variables.
pub const ENV_PREFIX: &str = "CAIRN_SECRET_";

/// Named secret values.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only, never values.
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Secrets from `CAIRN_SECRET_<NAME>` environment variables.
    pub fn from_env() -> Self {
        let values = std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix(ENV_PREFIX).map(|n| (n.to_owned(), v)))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        Secrets { values }
    }

    /// Adds `NAME=value` lines from a file (blank lines and `#` comments
    /// ignored); returns an error naming the line that is not `NAME=value`.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {} is not NAME=value", i + 1))?;
            self.values.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(())
    }

    /// Adds one secret.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    /// Secret names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.values.keys().map(String::as_str).collect()
    }

    /// The `secrets` template variable with the real values.
    pub fn template_value(&self) -> Value {
        Value::Object(self.values.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
    }

    /// Replaces every secret value inside `v` with `[redacted:NAME]`.
    pub fn scrub(&self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.scrub_str(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.scrub(i)),
            Value::Object(map) => map.values_mut().for_each(|i| self.scrub(i)),
            _ => {}
        }
    }

    /// Replaces every secret value inside `s`.
    pub fn scrub_str(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (name, value) in &self.values {
            // Very short values would redact ordinary text; they are not secrets worth the name.
            if value.len() >= 4 && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &placeholder(name));
            }
        }
        out
    }
}

/// What a recorded input holds instead of a secret.
pub fn placeholder(name: &str) -> String {
    format!("[redacted:{name}]")
}
