//! Generates docs/events.md from the catalog types, so the document cannot
//! drift from the code (a test compares them).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::catalog::catalog;
use crate::envelope::{Metadata, RecordedEvent};

const INTRO: &str = include_str!("events_intro.md");

/// The whole of docs/events.md.
pub fn events_markdown() -> String {
    let mut out = String::new();
    out.push_str(INTRO);
    let mut defs: BTreeMap<String, Value> = BTreeMap::new();

    out.push_str("\n## Envelope\n\nEvery stored event, whatever its type, has these fields:\n\n");
    let env = schemars::schema_for!(RecordedEvent);
    fields_table(&mut out, env.as_value(), &mut defs);
    out.push_str("\n### Metadata\n\nThe `metadata` field holds this object as JSON text:\n\n");
    let meta = schemars::schema_for!(Metadata);
    fields_table(&mut out, meta.as_value(), &mut defs);

    let cat = catalog();
    for (group, title) in [
        ("run", "Run events (stream `run-<uuid>`)"),
        ("workflow", "Workflow events (stream `workflow-<name>`)"),
        ("schedule", "Schedule events (stream `schedule-<name>`)"),
        ("trigger", "Trigger events (stream `trigger-<name>`)"),
        ("delivery", "Subscription and delivery events (streams `subscriptions` and `deliveries`)"),
        ("access", "Access events (stream `apikeys`)"),
        ("operations", "Operations events (stream `operations`)"),
    ] {
        let _ = write!(out, "\n## {title}\n");
        for info in cat.iter().filter(|i| i.group == group) {
            let v = info.schema.as_value();
            let _ = write!(out, "\n### {}\n\nSchema version {}. ", info.event_type, info.schema_version);
            if let Some(d) = v.get("description").and_then(Value::as_str) {
                out.push_str(d);
            }
            out.push_str("\n\n");
            fields_table(&mut out, v, &mut defs);
        }
    }
    if !defs.is_empty() {
        out.push_str("\n## Shared types\n");
        let mut done = std::collections::BTreeSet::new();
        while let Some((name, schema)) =
            defs.iter().find(|(n, _)| !done.contains(*n)).map(|(n, s)| (n.clone(), s.clone()))
        {
            done.insert(name.clone());
            let _ = write!(out, "\n### {name}\n\n");
            if let Some(d) = schema.get("description").and_then(Value::as_str) {
                out.push_str(d);
                out.push_str("\n\n");
            }
            fields_table(&mut out, &schema, &mut defs);
        }
    }
    out
}

fn fields_table(out: &mut String, schema: &Value, defs: &mut BTreeMap<String, Value>) {
    if let Some(d) = schema.get("$defs").and_then(Value::as_object) {
        for (k, v) in d {
            defs.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        out.push_str("(no fields)\n");
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
    for (name, p) in props {
        let desc = p.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " ");
        let req = if required.contains(&name.as_str()) { "yes" } else { "no" };
        let _ = writeln!(out, "| `{name}` | {} | {req} | {desc} |", type_of(p));
    }
}

fn type_of(p: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            return alts.iter().map(type_of).collect::<Vec<_>>().join(" or ");
        }
    }
    match p.get("type") {
        Some(Value::String(t)) => single(t, p),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).map(|t| single(t, p)).collect::<Vec<_>>().join(" or ")
        }
        _ => "any JSON".to_owned(),
    }
}

fn single(t: &str, p: &Value) -> String {
    match t {
        "array" => format!("array of {}", p.get("items").map(type_of).unwrap_or_else(|| "any JSON".into())),
        "string" | "integer" | "number" => match p.get("format").and_then(Value::as_str) {
            Some(f) => format!("{t} ({f})"),
            None => t.to_owned(),
        },
        other => other.to_owned(),
    }
}
