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

    /// The value of secret `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
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

    /// Replaces every secret value inside `s`, and its common encodings
    /// (see [`encodings`]): a service that echoes a secret back upper-cased,
    /// base64-encoded (as in a Basic `Authorization` header) or hex-encoded
    /// does not get it recorded either.
    pub fn scrub_str(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (name, value) in &self.values {
            // Very short values would redact ordinary text; they are not secrets worth the name.
            if value.len() < 4 {
                continue;
            }
            for form in encodings(value) {
                if out.contains(form.as_str()) {
                    out = replace_word(&out, &form, &placeholder(name));
                }
            }
        }
        out
    }
}

/// Replaces each `form` in `s`, together with the rest of the encoded word
/// around it when it is base64 or hex (the characters next to it encode the
/// secret's first and last bytes mixed with what surrounds it).
fn replace_word(s: &str, form: &str, with: &str) -> String {
    let encoded = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    if !form.chars().all(encoded) {
        return s.replace(form, with);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(form) {
        let before = &rest[..i];
        let start = before.trim_end_matches(encoded).len();
        let after = &rest[i + form.len()..];
        let end = after.len() - after.trim_start_matches(encoded).len();
        out.push_str(&before[..start]);
        out.push_str(with);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A secret and the forms it commonly takes when a service echoes it: as
/// is, upper- and lower-case, reversed, percent- and JSON-escaped, hex, and
/// base64 (standard and URL-safe) at each of the three alignments it can
/// have inside a longer encoded text (`user:SECRET` in a Basic header),
/// keeping only the characters that depend on the secret alone. The
/// longest come first, so a form inside another is replaced with it.
pub fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut out = vec![
        secret.to_owned(),
        secret.to_uppercase(),
        secret.to_lowercase(),
        secret.chars().rev().collect(),
        hex::encode(secret),
        hex::encode_upper(secret),
    ];
    let escaped: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    out.push(escaped);
    if let Ok(json) = serde_json::to_string(secret) {
        out.push(json.trim_matches('"').to_owned());
    }
    for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
        for k in 0..3usize {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&bytes);
            // Whole groups of three bytes of the secret alone.
            let start = if k == 0 { 0 } else { 4 };
            let end = 4 * ((k + secret.len()) / 3);
            if end > start && end - start >= 8 {
                out.push(enc[start..end].to_owned());
            }
        }
    }
    out.retain(|f| f.len() >= 4);
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// What a recorded input holds instead of a secret.
pub fn placeholder(name: &str) -> String {
    format!("[redacted:{name}]")
}
