//! Human steps: forms a person fills in and approvals by listed approvers.
//! The field rules, the checks a submission must pass (every error at once,
//! each naming its field), quorums, and resume tokens. Pure, except that a
//! token is derived with the engine's secret key.

use std::time::Duration;

use cairn_events::FormField;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The type of a form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// One line of text.
    Text,
    /// Several lines of text.
    Textarea,
    /// A number.
    Number,
    /// A whole number.
    Integer,
    /// Yes or no.
    Boolean,
    /// One of `options`.
    Select,
    /// Any of `options`.
    Multiselect,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An email address.
    Email,
    /// An http(s) URL.
    Url,
}

impl FieldType {
    /// Every type's name, for messages.
    pub const NAMES: &'static str = "text, textarea, number, integer, boolean, select, multiselect, date, email, url";

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "text" => FieldType::Text,
            "textarea" => FieldType::Textarea,
            "number" => FieldType::Number,
            "integer" => FieldType::Integer,
            "boolean" => FieldType::Boolean,
            "select" => FieldType::Select,
            "multiselect" => FieldType::Multiselect,
            "date" => FieldType::Date,
            "email" => FieldType::Email,
            "url" => FieldType::Url,
            _ => return None,
        })
    }

    /// The type's name.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Textarea => "textarea",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Select => "select",
            FieldType::Multiselect => "multiselect",
            FieldType::Date => "date",
            FieldType::Email => "email",
            FieldType::Url => "url",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, FieldType::Text | FieldType::Textarea | FieldType::Email | FieldType::Url | FieldType::Date)
    }
}

/// One field of a form, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Key in the submitted values.
    pub name: String,
    /// Type.
    pub kind: FieldType,
    /// Label shown to the person.
    pub label: Option<String>,
    /// Whether a value is required.
    pub required: bool,
    /// The value used when none is given.
    pub default: Option<Value>,
    /// Least value (numbers).
    pub min: Option<f64>,
    /// Greatest value (numbers).
    pub max: Option<f64>,
    /// Least length (text) or count (multiselect).
    pub min_length: Option<u64>,
    /// Greatest length (text) or count (multiselect).
    pub max_length: Option<u64>,
    /// A regular expression the whole text must match.
    pub pattern: Option<String>,
    /// Choices (select, multiselect).
    pub options: Vec<String>,
    /// Help text.
    pub help: Option<String>,
}

/// A `form` step, compiled.
#[derive(Debug, Clone)]
pub struct FormStep {
    /// What the form asks for (a template).
    pub title: Option<String>,
    /// Its fields.
    pub fields: Vec<Field>,
    /// Who may submit (templates); empty: anyone holding the token.
    pub assignees: Vec<String>,
    /// How long it may wait.
    pub deadline: Option<Duration>,
    /// Reminders, as durations before the deadline.
    pub reminders: Vec<Duration>,
}

/// How many approvals an approval needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// One.
    Any,
    /// Every approver.
    All,
    /// This many.
    Count(u32),
}

impl Quorum {
    /// Approvals needed among `n` approvers.
    pub fn required(self, n: usize) -> u32 {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match self {
            Quorum::Any => 1.min(n),
            Quorum::All => n,
            Quorum::Count(k) => k.min(n),
        }
    }

    /// As written.
    pub fn name(self) -> String {
        match self {
            Quorum::Any => "any".into(),
            Quorum::All => "all".into(),
            Quorum::Count(k) => k.to_string(),
        }
    }
}

/// What happens when an approval's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// It counts as rejected.
    Reject,
    /// The step fails (`approval.expired`).
    Fail,
    /// It is asked of `escalate_to`; a second deadline rejects.
    Escalate,
}

impl OnTimeout {
    /// As written.
    pub fn name(self) -> &'static str {
        match self {
            OnTimeout::Reject => "reject",
            OnTimeout::Fail => "fail",
            OnTimeout::Escalate => "escalate",
        }
    }
}

/// An `approval` step, compiled.
#[derive(Debug, Clone)]
pub struct ApprovalStep {
    /// Identities allowed to decide (templates).
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub quorum: Quorum,
    /// Summary shown to approvers (a template).
    pub summary: String,
    /// The content being approved (a template).
    pub content: Value,
    /// How long it may wait.
    pub deadline: Option<Duration>,
    /// Reminders, as durations before the deadline.
    pub reminders: Vec<Duration>,
    /// What a passed deadline does.
    pub on_timeout: OnTimeout,
    /// Who decides after an escalation (templates).
    pub escalate_to: Vec<String>,
    /// Whether a rejection fails the step (`true`, the default) or
    /// completes it with `approved: false` for the workflow to branch on.
    pub fail_on_reject: bool,
    /// Typed fields a decision carries (none: approve or reject and a
    /// comment only).
    pub fields: Vec<Field>,
}

/// One problem with a submitted field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field (or `_` for the submission as a whole).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Field {
    /// The field as recorded in `InputRequested`.
    pub fn recorded(&self) -> FormField {
        let mut c = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                c.insert(k.into(), v);
            }
        };
        put("default", self.default.clone());
        put("min", self.min.map(|v| json!(v)));
        put("max", self.max.map(|v| json!(v)));
        put("min_length", self.min_length.map(|v| json!(v)));
        put("max_length", self.max_length.map(|v| json!(v)));
        put("pattern", self.pattern.clone().map(Value::String));
        if !self.options.is_empty() {
            c.insert("options".into(), json!(self.options));
        }
        FormField {
            name: self.name.clone(),
            field_type: self.kind.name().into(),
            label: self.label.clone(),
            required: self.required,
            help: self.help.clone(),
            constraints: Value::Object(c),
        }
    }

    /// Rebuilds a field from its recorded form (what a submission is
    /// checked against: the request as it was made).
    pub fn from_recorded(f: &FormField) -> Field {
        let c = &f.constraints;
        let num = |k: &str| c.get(k).and_then(Value::as_f64);
        let int = |k: &str| c.get(k).and_then(Value::as_u64);
        Field {
            name: f.name.clone(),
            kind: FieldType::parse(&f.field_type).unwrap_or(FieldType::Text),
            label: f.label.clone(),
            required: f.required,
            default: c.get("default").cloned(),
            min: num("min"),
            max: num("max"),
            min_length: int("min_length"),
            max_length: int("max_length"),
            pattern: c.get("pattern").and_then(Value::as_str).map(str::to_owned),
            options: c
                .get("options")
                .and_then(Value::as_array)
                .map(|o| o.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect())
                .unwrap_or_default(),
            help: f.help.clone(),
        }
    }

    /// The JSON Schema of the field's value (for the step's output contract).
    pub fn schema(&self) -> Value {
        let mut s = match self.kind {
            FieldType::Number => json!({"type": "number"}),
            FieldType::Integer => json!({"type": "integer"}),
            FieldType::Boolean => json!({"type": "boolean"}),
            FieldType::Multiselect => json!({"type": "array", "items": {"type": "string"}}),
            _ => json!({"type": "string"}),
        };
        if self.kind == FieldType::Select && !self.options.is_empty() {
            s["enum"] = json!(self.options);
        }
        if let Some(h) = self.label.as_ref().or(self.help.as_ref()) {
            s["description"] = json!(h);
        }
        s
    }

    /// Turns typed text (a terminal answer, `--field k=v`) into a value of
    /// the field's type; errors say what was expected.
    pub fn parse_text(&self, text: &str) -> Result<Value, String> {
        let t = text.trim();
        match self.kind {
            FieldType::Number => t
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| json!(v))
                .ok_or_else(|| format!("`{t}` is not a number")),
            FieldType::Integer => {
                t.parse::<i64>().map(|v| json!(v)).map_err(|_| format!("`{t}` is not a whole number"))
            }
            FieldType::Boolean => match t.to_ascii_lowercase().as_str() {
                "y" | "yes" | "true" | "1" => Ok(json!(true)),
                "n" | "no" | "false" | "0" => Ok(json!(false)),
                _ => Err(format!("`{t}` is not yes or no")),
            },
            FieldType::Multiselect => {
                if t.starts_with('[')
                    && let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(t)
                {
                    return Ok(v);
                }
                Ok(Value::Array(t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| json!(s)).collect()))
            }
            _ => Ok(Value::String(text.to_owned())),
        }
    }

    /// Checks one value; `None` is absent.
    fn check(&self, v: &Value) -> Result<Value, String> {
        let kind = self.kind;
        match kind {
            FieldType::Number => {
                let Some(n) = v.as_f64() else { return Err(format!("must be a number, not {}", show(v))) };
                self.bounds(n)?;
            }
            FieldType::Integer => {
                let Some(n) = v.as_i64() else { return Err(format!("must be a whole number, not {}", show(v))) };
                self.bounds(n as f64)?;
            }
            FieldType::Boolean => {
                if !v.is_boolean() {
                    return Err(format!("must be true or false, not {}", show(v)));
                }
            }
            FieldType::Select => {
                let Some(s) = v.as_str() else {
                    return Err(format!("must be one of {}, not {}", self.choices(), show(v)));
                };
                if !self.options.iter().any(|o| o == s) {
                    return Err(format!("`{s}` is not one of {}", self.choices()));
                }
            }
            FieldType::Multiselect => {
                let Some(items) = v.as_array() else { return Err(format!("must be a list of {}", self.choices())) };
                let mut seen = Vec::new();
                for i in items {
                    match i.as_str() {
                        Some(s) if self.options.iter().any(|o| o == s) => {
                            if seen.contains(&s) {
                                return Err(format!("lists `{s}` twice"));
                            }
                            seen.push(s);
                        }
                        _ => return Err(format!("{} is not one of {}", show(i), self.choices())),
                    }
                }
                self.lengths(items.len(), "choices")?;
            }
            _ => {
                let Some(s) = v.as_str() else { return Err(format!("must be text, not {}", show(v))) };
                self.lengths(s.chars().count(), "characters")?;
                match kind {
                    FieldType::Email if !is_email(s) => return Err(format!("`{s}` is not an email address")),
                    FieldType::Url if !is_url(s) => {
                        return Err(format!("`{s}` is not an http or https URL (e.g. https://example.com/page)"));
                    }
                    FieldType::Date if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() => {
                        return Err(format!("`{s}` is not a date; write YYYY-MM-DD, e.g. 2026-12-24"));
                    }
                    FieldType::Text if s.contains('\n') => {
                        return Err("must be one line (use a textarea field for more)".into());
                    }
                    _ => {}
                }
                if let Some(p) = &self.pattern {
                    match regex::Regex::new(&format!("^(?:{p})$")) {
                        Ok(re) if !re.is_match(s) => return Err(format!("`{s}` does not match the pattern `{p}`")),
                        Ok(_) => {}
                        Err(_) => return Err(format!("the form's pattern `{p}` is not a valid regular expression")),
                    }
                }
            }
        }
        Ok(v.clone())
    }

    fn bounds(&self, n: f64) -> Result<(), String> {
        if let Some(min) = self.min
            && n < min
        {
            return Err(format!("{n} is less than the least allowed, {min}"));
        }
        if let Some(max) = self.max
            && n > max
        {
            return Err(format!("{n} is more than the most allowed, {max}"));
        }
        Ok(())
    }

    fn lengths(&self, len: usize, what: &str) -> Result<(), String> {
        let len = len as u64;
        if let Some(min) = self.min_length
            && len < min
        {
            return Err(format!("has {len} {what}; at least {min} are needed"));
        }
        if let Some(max) = self.max_length
            && len > max
        {
            return Err(format!("has {len} {what}; at most {max} are allowed"));
        }
        Ok(())
    }

    fn choices(&self) -> String {
        self.options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
    }
}

fn show(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 60 { format!("{}…", &t[..t.floor_char_boundary(60)]) } else { t }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '>')
}

fn is_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Checks a submission against the fields: every error at once, each naming
/// its field; unknown fields are errors too. Returns the values with
/// defaults filled in.
pub fn validate(fields: &[Field], submitted: &Value) -> Result<Value, Vec<FieldError>> {
    let empty = Map::new();
    let given = match submitted {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            return Err(vec![FieldError {
                field: "_".into(),
                message: format!("a submission is an object of field values, not {}", show(other)),
            }]);
        }
    };
    let mut errors = Vec::new();
    let mut out = Map::new();
    for f in fields {
        let v = given.get(&f.name).filter(|v| !(v.is_null() || f.kind.is_text() && v.as_str() == Some("")));
        match (v, &f.default) {
            (Some(v), _) => match f.check(v) {
                Ok(v) => {
                    out.insert(f.name.clone(), v);
                }
                Err(message) => errors.push(FieldError { field: f.name.clone(), message }),
            },
            (None, Some(d)) => {
                out.insert(f.name.clone(), d.clone());
            }
            (None, None) if f.required => {
                errors.push(FieldError { field: f.name.clone(), message: "is required".into() })
            }
            (None, None) => {}
        }
    }
    for k in given.keys() {
        if !fields.iter().any(|f| &f.name == k) {
            let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            let hint = crate::lang::diagnostic::did_you_mean(k, known.iter().copied()).map_or_else(
                || format!("the form's fields are {}", known.join(", ")),
                |d| format!("did you mean `{d}`?"),
            );
            errors.push(FieldError { field: k.clone(), message: format!("is not a field of this form; {hint}") });
        }
    }
    if errors.is_empty() { Ok(Value::Object(out)) } else { Err(errors) }
}

/// The output contract a form's step has: its fields.
pub fn form_contract(fields: &[Field]) -> Value {
    let props: Map<String, Value> = fields.iter().map(|f| (f.name.clone(), f.schema())).collect();
    let required: Vec<&str> =
        fields.iter().filter(|f| f.required || f.default.is_some()).map(|f| f.name.as_str()).collect();
    json!({"type": "object", "properties": props, "required": required})
}

/// The output contract of an approval step; with fields, `values` holds
/// the approving decision's (`null` when none approved).
pub fn approval_contract(fields: &[Field]) -> Value {
    let mut c = json!({
        "type": "object",
        "properties": {
            "approved": {"type": "boolean"},
            "decision": {"type": "string", "enum": ["approved", "rejected", "expired"]},
            "comment": {"type": ["string", "null"]},
            "decisions": {"type": "array"},
            "content_hash": {"type": "string"},
        },
        "required": ["approved", "decision", "decisions", "content_hash"],
    });
    if !fields.is_empty() {
        let mut values = form_contract(fields);
        values["type"] = json!(["object", "null"]);
        c["properties"]["values"] = values;
        if let Some(r) = c["required"].as_array_mut() {
            r.push(json!("values"));
        }
    }
    c
}

/// Checks the fields a decision carries: approving must satisfy them
/// (required ones included); rejecting may give them, each checked as
/// given. No fields: a decision carries no values.
pub fn validate_decision(fields: &[Field], approve: bool, submitted: &Value) -> Result<Option<Value>, Vec<FieldError>> {
    let given =
        matches!(submitted, Value::Object(m) if !m.is_empty()) || !(submitted.is_null() || submitted.is_object());
    if fields.is_empty() {
        return if given {
            Err(vec![FieldError {
                field: "_".into(),
                message: "this approval asks for no fields; decide with approve or reject and a comment".into(),
            }])
        } else {
            Ok(None)
        };
    }
    if approve {
        return validate(fields, submitted).map(Some);
    }
    let optional: Vec<Field> = fields.iter().map(|f| Field { required: false, ..f.clone() }).collect();
    validate(&optional, submitted).map(|v| given.then_some(v))
}

/// SHA-256 of a value's canonical JSON (object keys sorted), hex: what an
/// approval binds to.
pub fn content_hash(v: &Value) -> String {
    fn canon(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), canon(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
            other => other.clone(),
        }
    }
    hex::encode(Sha256::digest(canon(v).to_string().as_bytes()))
}

/// The resume token of a request: derived from the engine's secret key, the
/// run, the step and its attempt, so any process holding the key can show it
/// again (in a notification retried after a crash, say) while the log holds
/// only its hash. Unguessable without the key.
pub fn resume_token(key: &[u8], run_id: Uuid, step: &str, attempt: u32) -> String {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(b"cairn-resume-token\0");
    msg.extend_from_slice(run_id.as_bytes());
    msg.extend_from_slice(step.as_bytes());
    msg.push(0);
    msg.extend_from_slice(&attempt.to_be_bytes());
    format!("crt_{}", hex::encode(hmac(key, &msg)))
}

/// A personal answer token: what a notification to `identity` carries (in
/// its link and its command line). Bound to the run, the step attempt and
/// that one person: it answers as `identity` only, for this attempt's
/// request only, and like [`resume_token`] any process holding the key can
/// derive it again. `cat_` + the identity in hex + `_` + the HMAC, so the
/// server learns who presents it without a lookup.
pub fn answer_token(key: &[u8], run_id: Uuid, step: &str, attempt: u32, identity: &str) -> String {
    format!(
        "cat_{}_{}",
        hex::encode(identity.as_bytes()),
        hex::encode(answer_mac(key, run_id, step, attempt, identity))
    )
}

fn answer_mac(key: &[u8], run_id: Uuid, step: &str, attempt: u32, identity: &str) -> [u8; 32] {
    let mut msg = Vec::with_capacity(80 + identity.len());
    msg.extend_from_slice(b"cairn-answer-token\0");
    msg.extend_from_slice(run_id.as_bytes());
    msg.extend_from_slice(step.as_bytes());
    msg.push(0);
    msg.extend_from_slice(&attempt.to_be_bytes());
    msg.extend_from_slice(identity.as_bytes());
    hmac(key, &msg)
}

/// Who a personal answer token ([`answer_token`]) was made for, if it is one
/// for this step attempt under `key` (compared in constant time); `None` for
/// anything else: another run, step, attempt or key, an edited identity,
/// a request-wide token.
pub fn answer_token_identity(key: &[u8], run_id: Uuid, step: &str, attempt: u32, token: &str) -> Option<String> {
    let rest = token.trim().strip_prefix("cat_")?;
    let (who, mac) = rest.split_once('_')?;
    let identity = String::from_utf8(hex::decode(who).ok()?).ok()?;
    let given = hex::decode(mac).ok()?;
    let want = answer_mac(key, run_id, step, attempt, &identity);
    let same = given.len() == want.len() && given.iter().zip(want.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    same.then_some(identity)
}

/// HMAC-SHA-256 under `key` of `purpose`, a NUL and `msg`: a MAC for one
/// purpose (a session cookie, a CSRF token) that no other purpose's MAC
/// under the same key can stand in for.
pub fn keyed_mac(key: &[u8], purpose: &str, msg: &[u8]) -> [u8; 32] {
    let mut m = Vec::with_capacity(purpose.len() + 1 + msg.len());
    m.extend_from_slice(purpose.as_bytes());
    m.push(0);
    m.extend_from_slice(msg);
    hmac(key, &m)
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(move |x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// SHA-256 of a token, hex: what the log stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Compares a presented token with a stored hash in constant time.
pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    let a = token_hash(token);
    a.len() == stored_hash.len() && a.bytes().zip(stored_hash.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(name: &str, kind: FieldType) -> Field {
        Field {
            name: name.into(),
            kind,
            label: None,
            required: false,
            default: None,
            min: None,
            max: None,
            min_length: None,
            max_length: None,
            pattern: None,
            options: Vec::new(),
            help: None,
        }
    }

    #[test]
    fn every_error_is_named_at_once() {
        let fields = vec![
            Field { required: true, min_length: Some(3), ..field("topic", FieldType::Text) },
            Field { min: Some(1.0), max: Some(10.0), ..field("count", FieldType::Integer) },
            Field { options: vec!["a".into(), "b".into()], ..field("pick", FieldType::Select) },
            field("mail", FieldType::Email),
            Field { default: Some(json!("x")), ..field("tone", FieldType::Text) },
            Field { pattern: Some("[A-Z]{3}".into()), ..field("code", FieldType::Text) },
        ];
        let e = validate(
            &fields,
            &json!({"topic": "ab", "count": 11, "pick": "c", "mail": "nope", "code": "abc", "colour": 1}),
        )
        .unwrap_err();
        let named: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(named, ["topic", "count", "pick", "mail", "code", "colour"], "{e:?}");
        let ok = validate(&fields, &json!({"topic": "abc", "count": 3, "code": "ABC"})).unwrap();
        assert_eq!(ok, json!({"topic": "abc", "count": 3, "tone": "x", "code": "ABC"}));
        assert_eq!(validate(&fields, &json!({})).unwrap_err()[0].message, "is required");
    }

    #[test]
    fn quorum_and_tokens() {
        assert_eq!(Quorum::Any.required(3), 1);
        assert_eq!(Quorum::All.required(3), 3);
        assert_eq!(Quorum::Count(5).required(3), 3);
        let run = Uuid::nil();
        let t = resume_token(b"k", run, "review", 1);
        assert_ne!(t, resume_token(b"k", run, "review", 2));
        assert_ne!(t, resume_token(b"other", run, "review", 1));
        assert!(token_matches(&t, &token_hash(&t)));
        assert!(!token_matches("crt_guess", &token_hash(&t)));
        let mine = answer_token(b"k", run, "review", 1, "ana");
        assert_eq!(answer_token_identity(b"k", run, "review", 1, &mine).as_deref(), Some("ana"));
        for (key, run, step, attempt) in [
            (&b"other"[..], run, "review", 1),
            (b"k", Uuid::max(), "review", 1),
            (b"k", run, "edit", 1),
            (b"k", run, "review", 2),
        ] {
            assert_eq!(answer_token_identity(key, run, step, attempt, &mine), None, "{step} {attempt}");
        }
        // The identity cannot be swapped for another's under the same MAC.
        let forged = mine.replacen(&hex::encode("ana"), &hex::encode("bob"), 1);
        assert_eq!(answer_token_identity(b"k", run, "review", 1, &forged), None);
        assert_eq!(answer_token_identity(b"k", run, "review", 1, &t), None);
        assert_eq!(answer_token_identity(b"k", run, "review", 1, "cat_zz_00"), None);
        assert_eq!(content_hash(&json!({"b": 1, "a": 2})), content_hash(&json!({"a": 2, "b": 1})));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
