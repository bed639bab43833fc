//! Templates: the first line is a template, the rest a JSON context. Checking
//! and rendering never panic, and a render stays within its bounds (the
//! rendered text and value limits, fuel, and the work limit: libFuzzer's
//! 2 GiB memory limit catches a render that builds past it).
#![no_main]

use cairn_core::template::{self, Scope};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (tpl, ctx) = text.split_once('\n').unwrap_or((text, "{}"));
    let ctx: Value = serde_json::from_str(ctx).unwrap_or_else(|_| json!({ "inputs": { "x": 1, "s": "ab" } }));
    let value = Value::String(tpl.to_owned());
    let _ = template::check(&value);
    let scope = Scope::from(ctx);
    if let Ok(out) = template::render(&value, &scope) {
        // The bounds hold for what is rendered, before it is JSON: text in
        // bytes, a one-expression value by the engine's measure. JSON may
        // escape a byte into six (a NUL is `\u0000`); what is too large to
        // record is the event limit's to refuse at append.
        match &out {
            Value::String(s) => {
                assert!(s.len() <= template::MAX_RENDERED_VALUE_BYTES, "rendered {} bytes of text", s.len());
            }
            other => {
                let len = serde_json::to_string(other).map_or(0, |s| s.len());
                assert!(len <= 6 * template::MAX_RENDERED_VALUE_BYTES + 2, "rendered {len} bytes of JSON");
            }
        }
    }
});
