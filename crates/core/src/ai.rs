//! AI steps: what a step asks of a model, how a reply is judged against the
//! output contract, and what the next attempt is told when it was not good
//! enough. Everything here is pure and used by the decider; the wire
//! protocols live in the runtime's `provider` module.

use cairn_events::{AiMessage, SchemaViolation};
use serde_json::{Value, json};

use crate::config::OutputMode;
use crate::model::RetryPolicy;

pub use crate::config::PromptTemplate;
pub use crate::model::{AiStep, Prompt};

/// Default attempts whose output is judged.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// The default transport retry policy: 4 tries, 1 s doubling to 30 s.
pub fn default_transport() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_interval: std::time::Duration::from_secs(1),
        backoff_coefficient: 2.0,
        max_interval: std::time::Duration::from_secs(30),
        jitter: 0.1,
        ..RetryPolicy::default()
    }
}

/// Finds the JSON value in a model's reply: the whole text, else a fenced
/// block (```json … ```), else the first object or array embedded in prose.
pub fn extract_json(raw: &str) -> Option<Value> {
    let t = raw.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Some(v);
    }
    let mut rest = t;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
        let Some(close) = after[body_start..].find("```") else { break };
        let body = after[body_start..body_start + close].trim();
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            return Some(v);
        }
        rest = &after[body_start + close + 3..];
    }
    for (i, c) in t.char_indices().filter(|(_, c)| *c == '{' || *c == '[').take(64) {
        let _ = c;
        let mut it = serde_json::Deserializer::from_str(&t[i..]).into_iter::<Value>();
        if let Some(Ok(v)) = it.next()
            && (v.is_object() || v.is_array())
        {
            return Some(v);
        }
    }
    None
}

/// Judges a reply: the step's output, or every way it breaks the contract.
/// Without a contract the output is `{ "text": raw }`.
pub fn judge(contract: Option<&Value>, raw: &str) -> Result<Value, Vec<SchemaViolation>> {
    let Some(contract) = contract else { return Ok(json!({ "text": raw })) };
    let Some(v) = extract_json(raw) else {
        return Err(vec![SchemaViolation {
            path: "/".into(),
            message: "the reply contains no JSON value; reply with JSON only".into(),
        }]);
    };
    let errors = crate::contract::violations(contract, &v);
    if errors.is_empty() { Ok(v) } else { Err(errors) }
}

/// The instruction added when the server does not enforce the schema.
pub fn schema_instruction(contract: &Value) -> String {
    format!(
        "Reply with only a JSON value, no prose, that satisfies this JSON Schema:\n{}",
        serde_json::to_string(contract).unwrap_or_default()
    )
}

/// The user message that feeds a rejected reply's errors back.
pub fn feedback(errors: &[SchemaViolation], contract: &Value) -> String {
    let mut text = String::from("Your previous reply did not satisfy the output contract. Errors:\n");
    for e in errors {
        text.push_str(&format!("- at {}: {}\n", e.path, e.message));
    }
    text.push_str("Fix every error. ");
    text.push_str(&schema_instruction(contract));
    text
}

/// Builds the messages of one attempt: the step's rendered messages (with
/// the schema in the prompt unless the server enforces it), then each
/// earlier rejected reply of this step attempt and its feedback.
pub fn attempt_messages(
    base: &[AiMessage],
    contract: Option<&Value>,
    mode: OutputMode,
    rejected: &[(String, Vec<SchemaViolation>)],
) -> Vec<AiMessage> {
    let mut out = base.to_vec();
    if let (Some(c), true) = (contract, mode != OutputMode::JsonSchema) {
        let instruction = schema_instruction(c);
        match out.iter_mut().find(|m| m.role == "system") {
            Some(sys) => {
                sys.content.push_str("\n\n");
                sys.content.push_str(&instruction);
            }
            None => out.insert(0, AiMessage { role: "system".into(), content: instruction }),
        }
    }
    for (raw, errors) in rejected {
        out.push(AiMessage { role: "assistant".into(), content: raw.clone() });
        if let Some(c) = contract {
            out.push(AiMessage { role: "user".into(), content: feedback(errors, c) });
        }
    }
    out
}

/// A rough token count (4 characters a token), for budgets before a call.
pub fn estimate_tokens(messages: &[AiMessage]) -> u64 {
    let chars: usize = messages.iter().map(|m| m.content.chars().count() + 4).sum();
    (chars as u64).div_ceil(4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_in_prose_and_fences() {
        assert_eq!(extract_json(r#" {"a":1} "#), Some(json!({"a": 1})));
        assert_eq!(extract_json("Here it is:\n```json\n{\"a\": 2}\n```\nThanks"), Some(json!({"a": 2})));
        assert_eq!(extract_json("Sure! {\"a\": [3]} hope that helps"), Some(json!({"a": [3]})));
        assert_eq!(extract_json("no json {here"), None);
        assert_eq!(extract_json("{not json} but [1,2]"), Some(json!([1, 2])));
    }

    #[test]
    fn judging_names_every_error() {
        let c = json!({"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}});
        assert_eq!(judge(Some(&c), "{\"title\": \"x\"}"), Ok(json!({"title": "x"})));
        let e = judge(Some(&c), "{\"title\": 3}").unwrap_err();
        assert_eq!(e[0].path, "/title");
        let e = judge(Some(&c), "I cannot do that").unwrap_err();
        assert!(e[0].message.contains("no JSON"));
        assert_eq!(judge(None, "hello"), Ok(json!({"text": "hello"})));
    }
}
