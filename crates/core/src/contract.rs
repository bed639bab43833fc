//! JSON Schema checks (2020-12, no remote `$ref`s): the workflow's `inputs`
//! and each step's `output_contract`. Pure: usable from the decider.

use cairn_events::SchemaViolation;
use serde_json::Value;

/// Checks that `schema` is a valid JSON Schema.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    if let Some(hint) = yaml_boolean_in_required(schema) {
        return Err(hint);
    }
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| e.to_string())
}

/// YAML 1.1 reads an unquoted `y`, `n`, `yes`, `no`, `on` or `off` as a
/// boolean, so `required: [n]` lists `false`. Name the likely cause instead
/// of "false is not of type string".
fn yaml_boolean_in_required(schema: &Value) -> Option<String> {
    match schema {
        Value::Object(m) => {
            if let Some(Value::Array(items)) = m.get("required")
                && let Some(b) = items.iter().find(|v| v.is_boolean())
            {
                let props: Vec<&str> = m
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).filter(|k| is_yaml_bool_word(k)).collect())
                    .unwrap_or_default();
                let guess = match props.as_slice() {
                    [one] => format!(" (the property `{one}`?)"),
                    _ => String::new(),
                };
                return Some(format!(
                    "`required` lists the boolean {b}{guess}: YAML reads an unquoted y, n, yes, no, on or off as true or false; quote property names in `required`, e.g. `required: [\"n\"]`"
                ));
            }
            m.values().find_map(yaml_boolean_in_required)
        }
        Value::Array(items) => items.iter().find_map(yaml_boolean_in_required),
        _ => None,
    }
}

fn is_yaml_bool_word(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false")
}

/// Every way `instance` violates `schema` (empty when it conforms, or when
/// the schema itself is invalid, which validation reports earlier).
pub fn violations(schema: &Value, instance: &Value) -> Vec<SchemaViolation> {
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return Vec::new();
    };
    validator
        .iter_errors(instance)
        .map(|e| {
            let path = e.instance_path().to_string();
            SchemaViolation { path: if path.is_empty() { "/".into() } else { path }, message: e.to_string() }
        })
        .collect()
}

/// One line listing violations: `/title: "x" is not of type "number"; …`.
pub fn describe(v: &[SchemaViolation]) -> String {
    v.iter().map(|v| format!("{}: {}", v.path, v.message)).collect::<Vec<_>>().join("; ")
}
