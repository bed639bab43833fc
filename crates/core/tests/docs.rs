//! docs/workflow-language.schema.json is what `cairn schema` prints, and
//! docs/workflow-language.md documents every field and diagnostic code.
#![allow(missing_docs)]

use std::path::PathBuf;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

#[test]
fn committed_schema_matches_the_language() {
    let path = docs().join("workflow-language.schema.json");
    let generated = format!("{}\n", serde_json::to_string_pretty(&cairn_core::lang::schema()).expect("json"));
    if std::env::var("CAIRN_UPDATE_DOCS").is_ok() {
        std::fs::write(&path, &generated).expect("write");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/workflow-language.schema.json is out of date; run `CAIRN_UPDATE_DOCS=1 cargo test -p cairn-core --test docs` and commit it"
    );
}

#[test]
fn every_field_and_code_is_documented() {
    let md = std::fs::read_to_string(docs().join("workflow-language.md")).expect("docs/workflow-language.md");
    let schema = serde_json::to_value(cairn_core::lang::schema()).expect("json");
    let mut fields = Vec::new();
    let mut collect = |props: Option<&serde_json::Value>| {
        if let Some(p) = props.and_then(|p| p.as_object()) {
            fields.extend(p.keys().cloned());
        }
    };
    collect(schema.get("properties"));
    if let Some(defs) = schema.get("$defs").and_then(|d| d.as_object()) {
        for d in defs.values() {
            collect(d.get("properties"));
        }
    }
    for f in fields {
        assert!(md.contains(&format!("`{f}`")), "field `{f}` is not documented in docs/workflow-language.md");
    }
    for code in [
        "yaml",
        "bad-name",
        "no-steps",
        "bad-schema",
        "bad-step-id",
        "duplicate-step",
        "unknown-step",
        "bad-expression",
        "bad-duration",
        "step-kind",
        "misplaced-field",
        "bad-template",
        "unknown-task",
        "empty-switch",
        "bad-retry",
        "bad-max-visits",
        "unreachable-step",
        "unbounded-loop",
        "unknown-input",
        "unknown-step-reference",
        "self-reference",
        "maybe-not-run",
        "unknown-output-field",
        "empty-parallel",
        "empty-branch",
        "bad-branch-name",
        "duplicate-branch",
        "empty-map",
        "bad-items",
        "bad-concurrency",
        "bad-version",
        "jump-across-blocks",
        "nested-step-reference",
        "bad-ai",
        "bad-form",
        "bad-field",
        "bad-approval",
        "bad-reminder",
        "bad-budget",
        "secret-in-prompt",
        "unknown-model",
        "unknown-prompt-template",
        "missing-api-key",
        "bad-queue-name",
        "bad-heartbeat-timeout",
        "secret-to-queue",
    ] {
        assert!(md.contains(&format!("`{code}`")), "diagnostic code `{code}` is not documented");
    }
}

/// What an editor set up as docs/workflow-language.md says (the
/// yaml-language-server modeline or `yaml.schemas`) checks a file against:
/// every example, modeline included, satisfies the committed schema, and a
/// misspelt field is flagged.
#[test]
fn the_editor_schema_accepts_every_example() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("workflow-language.schema.json")).expect("schema"))
            .expect("json");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let dir = docs().join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let doc: serde_json::Value = serde_saphyr::from_str(&src).expect("yaml");
        let errors: Vec<String> =
            validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        n += 1;
    }
    assert!(n >= 5, "{n} examples");
    let modeline = std::fs::read_to_string(dir.join("branch-on-input.yaml")).expect("example");
    assert!(
        modeline.starts_with("# yaml-language-server: $schema=../docs/workflow-language.schema.json\n"),
        "the example the README runs shows the modeline"
    );
    let typo: serde_json::Value =
        serde_saphyr::from_str("name: w\nsteps:\n  - id: a\n    task: echo\n    retyr: { max_attempts: 2 }\n")
            .expect("yaml");
    assert!(!validator.is_valid(&typo), "a misspelt field is flagged");
}

/// The licence the workspace declares is the one in `LICENSE` (before:
/// `license = "Apache-2.0"` with no LICENSE file).
#[test]
fn the_declared_licence_is_in_the_repository() {
    let root = docs().join("..");
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"), "Apache-2.0 text");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""), "the workspace declares Apache-2.0");
}
