//! JSON Schema checks (2020-12, no remote `$ref`s): the workflow's `inputs`
//! and each step's `output_contract`. Pure: usable from the decider.

use cairn_events::SchemaViolation;
use serde_json::Value;

/// Checks that `schema` is a valid JSON Schema.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| e.to_string())
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
