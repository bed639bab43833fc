//! A template cannot make the engine build large values on the way to a
//! small result: every render is held to
//! [`cairn_core::template::MAX_RENDER_WORK`], measured here by how much the
//! process's peak resident memory rises during the render, and ordinary
//! templates render exactly as minijinja renders them.
//!
//! The tests in this binary run one at a time (`--test-threads` is not
//! needed: they share a lock), so the memory measured is the render's.

use cairn_core::template::{self, MAX_RENDER_WORK, MAX_RENDERED_BYTES, Scope};
use serde_json::{Value, json};

/// The process's resident memory now and at its peak since the last reset,
/// in bytes (Linux: /proc/self/status).
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let field = |name: &str| {
        let line =
            status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in /proc/self/status"));
        line.split_whitespace().nth(1).and_then(|k| k.parse::<usize>().ok()).expect("a size in kB") * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident memory to what is resident now.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs resets the peak (Linux 4.0 and later)");
}

/// Renders `tpl` and returns the result with how much the process's peak
/// resident memory rose during the render (one test in this binary measures,
/// so nothing else runs beside it).
fn render(tpl: &str, ctx: &Value) -> (Result<Value, String>, usize) {
    let scope = Scope::from(ctx.clone());
    let value = Value::String(tpl.to_owned());
    reset_peak();
    let (base, _) = rss();
    let out = template::render(&value, &scope).map_err(|e| e.message);
    let (_, peak) = rss();
    (out, peak.saturating_sub(base))
}

fn hostile_inputs() -> Value {
    json!({ "inputs": {
        "n": 100_000_000,
        "s": "x".repeat(1000),
        "big": "y".repeat(1 << 20),
    }})
}

/// Templates that would build gigabytes on the way to a few bytes; every
/// one reached an API caller's inputs or an author's template before.
const HOSTILE: &[(&str, &str)] = &[
    ("string repetition", "{{ ('x' * inputs.n) | length }}"),
    ("list repetition", "{{ ([0] * inputs.n) | length }}"),
    ("a string of a list repeated", "{{ (inputs.s * 100000) | list | length }}"),
    (
        "doubling through variables",
        "{% set a = inputs.s ~ inputs.s %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}\
         {% set e = d ~ d %}{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}{% set i = h ~ h %}\
         {% set j = i ~ i %}{% set k = j ~ j %}{% set l = k ~ k %}{% set m = l ~ l %}{% set n = m ~ m %}\
         {% set o = n ~ n %}{% set p = o ~ o %}{% set q = p ~ p %}{{ q | length }}",
    ),
    (
        "doubling in a namespace",
        "{% set ns = namespace(s=inputs.s) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
    ),
    ("replace of the empty string", "{{ inputs.s | replace('', inputs.s) | replace('', inputs.s) | length }}"),
    ("indent", "{{ inputs.s | indent(inputs.n) | length }}"),
    ("join with a large separator", "{{ range(100000) | join(inputs.s) | length }}"),
    ("format width", "{{ '%100000000s' | format('x') | length }}"),
    ("batch filled up", "{{ [1] | batch(inputs.n, 0) | list | length }}"),
    ("slice filled up", "{{ [1] | slice(inputs.n, 0) | list | length }}"),
    // Found by the fuzzer: a count past `i64` was read as no count at all.
    ("batch filled up past i64", "{{ [1] | batch(000012390532312324282752, 000) | length }}"),
    ("slice filled up past i64", "{{ [1] | slice(12390532312324282752, 0) | length }}"),
    ("batch filled up by a float", "{{ [1] | batch(1e12, 0) | length }}"),
    ("tojson indent", "{{ [[1]] | tojson(indent=100000000) | length }}"),
    (
        "a capture of many copies",
        "{% set x %}{% for i in range(30000) %}{{ inputs.s }}{% endfor %}{% endset %}{{ x | length }}",
    ),
    ("output", "{% for i in range(30000) %}{{ inputs.s }}{% endfor %}"),
    (
        "copies of a large input",
        "{% for i in range(500) %}{% if (inputs.big ~ '') | length > 1 %}{% endif %}{% endfor %}",
    ),
    (
        "slices of a large input",
        "{{ [inputs.big[1:], inputs.big[2:], inputs.big[3:], inputs.big[4:], inputs.big[5:], inputs.big[6:], inputs.big[7:], inputs.big[8:], inputs.big[9:], inputs.big[10:], inputs.big[11:], inputs.big[12:], inputs.big[13:], inputs.big[14:], inputs.big[15:], inputs.big[16:], inputs.big[17:], inputs.big[18:], inputs.big[19:], inputs.big[20:], inputs.big[21:], inputs.big[22:], inputs.big[23:], inputs.big[24:], inputs.big[25:], inputs.big[26:], inputs.big[27:], inputs.big[28:], inputs.big[29:], inputs.big[30:], inputs.big[31:], inputs.big[32:], inputs.big[33:], inputs.big[34:], inputs.big[35:], inputs.big[36:], inputs.big[37:], inputs.big[38:], inputs.big[39:], inputs.big[40:], inputs.big[41:], inputs.big[42:], inputs.big[43:], inputs.big[44:], inputs.big[45:], inputs.big[46:], inputs.big[47:], inputs.big[48:], inputs.big[49:], inputs.big[50:], inputs.big[51:], inputs.big[52:], inputs.big[53:], inputs.big[54:], inputs.big[55:], inputs.big[56:], inputs.big[57:], inputs.big[58:], inputs.big[59:], inputs.big[60:], inputs.big[61:], inputs.big[62:], inputs.big[63:], inputs.big[64:], inputs.big[65:], inputs.big[66:], inputs.big[67:], inputs.big[68:], inputs.big[69:], inputs.big[70:]] | length }}",
    ),
];

/// One test at a time in this binary, for the memory measure.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn a_render_never_holds_much_more_than_its_work_limit() {
    let _one = one();
    let ctx = hostile_inputs();
    // What the limit counts, plus the copy minijinja makes of a string it
    // has built (into a shared one) and the allocator's slack; without the
    // meter each of these held from 100 MB to many GB.
    let ceiling = 2 * MAX_RENDER_WORK + (8 << 20);
    for (what, tpl) in HOSTILE {
        let (out, peak) = render(tpl, &ctx);
        let message = out.expect_err(&format!("{what}: rendered, but should have been refused"));
        assert!(peak < ceiling, "{what}: held {peak} bytes during the render (ceiling {ceiling}): {message}");
        assert!(
            message.contains(&MAX_RENDER_WORK.to_string())
                || message.contains(&MAX_RENDERED_BYTES.to_string())
                || message.contains("fuel")
                || message.contains("tojson indents by at most"),
            "{what}: the error names no limit: {message}"
        );
    }
}

#[test]
fn the_error_says_which_limit_and_what_to_do() {
    let _one = one();
    let (out, _) = render("{{ ('x' * inputs.n) | length }}", &hostile_inputs());
    let message = out.expect_err("refused");
    assert!(message.contains(&format!("more than {MAX_RENDER_WORK} bytes")), "{message}");
    assert!(message.contains("build less"), "{message}");
    let (out, _) = render("{% for i in range(30000) %}{{ inputs.s }}{% endfor %}", &hostile_inputs());
    assert_eq!(out.expect_err("refused"), format!("rendered more than the limit of {MAX_RENDERED_BYTES} bytes"));
}

/// Ordinary templates: what minijinja itself renders, value for value.
const ORDINARY: &[&str] = &[
    "{{ inputs.price * inputs.qty }}",
    "{{ inputs.price * 1.5 }}",
    "{{ 'ab' * 3 }}",
    "{{ 3 * 'ab' }}",
    "{{ [1, 2] * 2 }}",
    "{{ [1, 2] + [3] }}",
    "{{ inputs.price + inputs.qty }}",
    "{{ 'a' ~ 1 ~ none }}",
    "{{ inputs.name[1:3] }}",
    "{{ inputs.name[::-1] }}",
    "{{ inputs.items[1:] }}",
    "{{ inputs.items | map(attribute='a') | list }}",
    "{{ inputs.items | selectattr('a', 'gt', 1) | list }}",
    "{{ inputs.items | sort(attribute='a', reverse=true) | first }}",
    "{{ [3, 1, 2] | sort(reverse=true) }}",
    "{{ inputs | tojson(indent=2) }}",
    "{{ inputs.name | replace('o', '0') | upper }}",
    "{{ inputs.name | indent(2, first=true) }}",
    "{{ inputs.tags | join(', ') }}",
    "{{ '%s is %d' | format(inputs.name, inputs.qty) }}",
    "{{ inputs.missing | default('none given') }}",
    "{{ range(5) | batch(2, 0) | list }}",
    "{{ range(5) | slice(2) | list }}",
    "{{ dict(a=1, b=inputs.qty) }}",
    "{{ inputs.items | groupby('a') | list | length }}",
    "Hello {{ inputs.name }}, you owe {{ inputs.price * inputs.qty }}.\n",
    "{% for t in inputs.tags %}{{ loop.index }}. {{ t | title }}\n{% endfor %}",
    "{%- if inputs.qty > 2 -%}  many  {%- else -%} few {%- endif %}",
    "{% set x %}captured {{ inputs.name }}{% endset %}[{{ x | trim }}]",
    "{% set ns = namespace(total=0) %}{% for i in inputs.items %}{% set ns.total = ns.total + i.a %}{% endfor %}{{ ns.total }}",
    "{% for i in inputs.items %}{{ i.a }}{% if not loop.last %},{% endif %}{% endfor %}",
    "{{ inputs.name is string }} {{ inputs.qty is even }}",
];

#[test]
fn ordinary_templates_render_as_minijinja_renders_them() {
    let _one = one();
    let ctx = json!({ "inputs": {
        "price": 12, "qty": 3, "name": "Cairn road",
        "items": [{"a": 1}, {"a": 3}, {"a": 2}],
        "tags": ["durable", "workflows"],
        "missing": null,
    }});
    let mut plain = minijinja::Environment::new();
    plain.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for tpl in ORDINARY {
        let (ours, _) = render(tpl, &ctx);
        let ours = ours.unwrap_or_else(|e| panic!("`{tpl}` failed: {e}"));
        let theirs = plain
            .render_str(tpl, minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .unwrap_or_else(|e| panic!("`{tpl}` fails in minijinja: {e}"));
        let ours = match ours {
            Value::String(s) => s,
            // A sole expression is its value; minijinja prints it.
            other => {
                let expr = tpl.trim().trim_start_matches("{{").trim_end_matches("}}");
                let v = plain.compile_expression(expr).expect("compiles in minijinja");
                let v = v.eval(minijinja::Value::from(minijinja::value::Serde(&ctx))).expect("evaluates in minijinja");
                let expected = serde_json::to_value(v).expect("JSON");
                assert_eq!(other, expected, "`{tpl}`");
                continue;
            }
        };
        assert_eq!(ours, theirs, "`{tpl}`");
    }
}

#[test]
fn the_metering_names_are_reserved() {
    let _one = one();
    for tpl in ["{{ __cairn_mul('x', 1000000000) }}", "{% set __cairn_mul = range %}{{ 'x' * 3 }}"] {
        let err = template::check(&Value::String(tpl.into())).expect_err("refused");
        assert!(err.message.contains("reserved"), "{tpl}: {}", err.message);
        let (out, _) = render(tpl, &json!({}));
        assert!(out.expect_err("refused").contains("reserved"), "{tpl}");
    }
}
