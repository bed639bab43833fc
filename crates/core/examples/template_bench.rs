//! TEMPLATE: what metering costs a render. Renders typical step templates
//! (a sole expression passing a value on, arithmetic, a filter chain, a text
//! template with a loop) through Cairn's metered engine and, as the floor in
//! the same run, through a plain minijinja environment (same settings, no
//! metering), both with compiled programs cached.
//!
//! cargo run --release -p cairn-core --example template_bench [-- --quick]

use std::time::Instant;

use cairn_core::template::{self, Scope};
use serde_json::{Value, json};

const TEMPLATES: &[&str] = &[
    "{{ steps.draft.output.title }}",
    "{{ inputs.price * inputs.qty * 1.2 }}",
    "{{ inputs.name | replace('o', '0') | upper | trim }}",
    "Dear {{ inputs.name }}, your {{ inputs.qty }} items:{% for i in inputs.items %} {{ i.a }}{% if not loop.last %},{% endif %}{% endfor %}.",
];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u32 = if quick { 20_000 } else { 200_000 };
    let ctx = json!({
        "inputs": { "price": 12, "qty": 3, "name": "Cairn road", "items": [{"a": 1}, {"a": 3}, {"a": 2}] },
        "steps": { "draft": { "output": { "title": "A durable title" } } },
    });
    let scope = Scope::from(ctx.clone());
    let mut plain = minijinja::Environment::new();
    plain.set_fuel(Some(template::FUEL));
    plain.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let plain_ctx = minijinja::Value::from(minijinja::value::Serde(&ctx));
    println!("TEMPLATE: {n} renders each; metered (Cairn) beside plain minijinja (floor), same run");
    for tpl in TEMPLATES {
        let value = Value::String((*tpl).to_owned());
        let sole = tpl.starts_with("{{") && tpl.ends_with("}}") && tpl.matches("{{").count() == 1;
        // Warm both caches.
        template::render(&value, &scope).expect("renders");
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(template::render(&value, &scope).expect("renders"));
        }
        let ours = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = Instant::now();
        if sole {
            let e = plain.compile_expression(&tpl[2..tpl.len() - 2]).expect("compiles");
            for _ in 0..n {
                let v = e.eval(&plain_ctx).expect("evaluates");
                std::hint::black_box(serde_json::to_value(&v).expect("json"));
            }
        } else {
            let t2 = plain.template_from_str(tpl).expect("compiles");
            for _ in 0..n {
                std::hint::black_box(t2.render(&plain_ctx).expect("renders"));
            }
        }
        let floor = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("{:>9.0} ns  floor {:>7.0} ns  ({:.2}×)  {tpl}", ours, floor, ours / floor);
    }
}
