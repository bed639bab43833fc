//! Conditions: the first line is a CEL condition, the rest a JSON context.
//! Compiling and evaluating never panic, and an evaluation over its cost
//! budget is refused before it runs.
#![no_main]

use cairn_core::expr::Condition;
use cairn_core::template::Scope;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (src, ctx) = text.split_once('\n').unwrap_or((text, "{}"));
    let ctx: Value =
        serde_json::from_str(ctx).unwrap_or_else(|_| json!({ "inputs": { "n": 3, "items": [1, 2, 3], "s": "x" } }));
    let Ok(c) = Condition::compile(src) else { return };
    let scope = Scope::from(ctx);
    let _ = c.holds(&scope);
    let _ = c.value(&scope);
});
