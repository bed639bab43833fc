//! The YAML front end: any bytes either parse into a workflow or give
//! diagnostics; never a panic, a hang or unbounded memory. A workflow that
//! parses also renders its own schema-checked pieces without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let tasks = ["echo", "fail", "sleep", "http"];
    match cairn_core::lang::parse(src, "fuzz.yaml", &tasks) {
        Ok(w) => {
            // What validates can be named and hashed.
            assert!(!w.name.is_empty());
            assert!(!w.definition_hash.is_empty());
        }
        Err(d) => {
            // Diagnostics always say something.
            assert!(!d.to_string().is_empty());
        }
    }
});
