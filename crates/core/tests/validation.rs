//! Validation finds every problem before anything runs, each with
//! file:line:column, what is wrong and how to fix it.
#![allow(missing_docs)]

use cairn_core::lang::{Diagnostic, parse};

/// The runtime's built-in task names (`TaskRegistry::builtin()`; a runtime
/// test holds the two together).
const BUILTIN_TASKS: &[&str] = &["echo", "fail", "increment", "log", "sleep"];

fn diags(src: &str) -> Vec<Diagnostic> {
    match parse(src, "wf.yaml", BUILTIN_TASKS) {
        Ok(_) => Vec::new(),
        Err(d) => d.0,
    }
}

/// Expects a diagnostic with `code` on `line` whose message or help contains
/// every one of `words`.
fn check(src: &str, code: &str, line: u64, words: &[&str]) {
    let all = diags(src);
    let found = all
        .iter()
        .find(|d| d.code == code && d.line == line && words.iter().all(|w| d.to_string().contains(w)))
        .or_else(|| all.iter().find(|d| d.code == code && d.line == line));
    let Some(d) = found else {
        panic!(
            "expected `{code}` on line {line}, got:\n{}",
            all.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
        );
    };
    let text = d.to_string();
    assert!(text.starts_with(&format!("wf.yaml:{line}:")), "{text}");
    assert!(d.column > 0, "{text}");
    for w in words {
        assert!(text.contains(w), "`{text}` should contain `{w}`");
    }
}

#[test]
fn duplicate_step_ids() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n  - id: a\n    task: echo\n",
        "duplicate-step",
        5,
        &["`a`", "line 3"],
    );
}

#[test]
fn unknown_jump_target_suggests_the_closest() {
    check(
        "name: w\nsteps:\n  - id: draft\n    task: echo\n    next: publsh\n  - id: publish\n    task: echo\n",
        "unknown-step",
        5,
        &["publsh", "did you mean `publish`"],
    );
    check(
        "name: w\nsteps:\n  - id: b\n    branch: { if: 'true', then: nowhere, else: end }\n",
        "unknown-step",
        4,
        &["nowhere"],
    );
}

#[test]
fn unreachable_steps() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    end: true\n  - id: orphan\n    task: echo\n",
        "unreachable-step",
        6,
        &["orphan", "never run"],
    );
}

#[test]
fn loops_need_max_visits() {
    let looping =
        "name: w\nsteps:\n  - id: a\n    task: echo\n  - id: again\n    branch: { if: 'true', then: a, else: end }\n";
    check(looping, "unbounded-loop", 3, &["`a`", "`again`", "max_visits"]);
    let bounded = looping.replace("    task: echo\n  - id: again", "    task: echo\n    max_visits: 3\n  - id: again");
    assert!(diags(&bounded).is_empty(), "{:?}", diags(&bounded));
}

#[test]
fn references_to_steps_that_may_not_have_run() {
    let src = "name: w\nsteps:\n  - id: pick\n    branch: { if: 'true', then: maybe, else: after }\n  - id: maybe\n    task: echo\n  - id: after\n    task: echo\n    with: { x: '{{ steps.maybe.output }}' }\n";
    check(src, "maybe-not-run", 7, &["`after`", "steps.maybe", "every path"]);
    // On every path: fine.
    let ok = "name: w\nsteps:\n  - id: first\n    task: echo\n  - id: second\n    task: echo\n    with: { x: '{{ steps.first.output }}' }\n";
    assert!(diags(ok).is_empty());
}

#[test]
fn references_to_unknown_steps_and_fields() {
    check(
        "name: w\nsteps:\n  - id: draft\n    task: echo\n  - id: use\n    task: echo\n    with: { x: '{{ steps.drafts.output }}' }\n",
        "unknown-step-reference",
        5,
        &["steps.drafts", "did you mean `steps.draft`"],
    );
    check(
        "name: w\nsteps:\n  - id: draft\n    task: echo\n    output_contract: { type: object, properties: { title: { type: string }, body: { type: string } } }\n  - id: use\n    task: echo\n    with: { x: '{{ steps.draft.output.titel }}' }\n",
        "unknown-output-field",
        6,
        &["titel", "did you mean `title`"],
    );
    check(
        "name: w\ninputs: { type: object, properties: { topic: { type: string } } }\nsteps:\n  - id: a\n    task: echo\n    with: { t: '{{ inputs.topik }}' }\n",
        "unknown-input",
        4,
        &["inputs.topik", "did you mean `inputs.topic`"],
    );
}

#[test]
fn bad_expressions_templates_and_durations() {
    check(
        "name: w\nsteps:\n  - id: b\n    branch: { if: 'inputs.x >', then: end }\n",
        "bad-expression",
        4,
        &["inputs.x >"],
    );
    check("name: w\nsteps:\n  - id: t\n    transform: { x: '{{ inputs.x + }}' }\n", "bad-template", 3, &["inputs.x +"]);
    check("name: w\nsteps:\n  - id: t\n    task: echo\n    timeout: 30 seconds\n", "bad-duration", 5, &["30 seconds"]);
    check(
        "name: w\nsteps:\n  - id: t\n    task: echo\n    retry: { initial_interval: 5 }\n",
        "bad-duration",
        5,
        &["no unit"],
    );
}

#[test]
fn step_kinds_and_handlers() {
    check("name: w\nsteps:\n  - id: t\n    task: ecko\n", "unknown-task", 4, &["ecko", "did you mean `echo`"]);
    check(
        "name: w\nsteps:\n  - id: t\n    task: echo\n    transform: { a: 1 }\n",
        "step-kind",
        3,
        &["task and transform", "one thing"],
    );
    check("name: w\nsteps:\n  - id: t\n    description: nothing\n", "step-kind", 3, &["does not say"]);
}

#[test]
fn yaml_errors_have_a_location() {
    check("name: w\nsteps:\n  - id: t\n    task: echo\n    colour: blue\n", "unknown-field", 5, &["colour"]);
    check("name: w\nname: x\nsteps: []\n", "yaml", 2, &["name"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let src =
        "name: w\nsteps:\n  - id: a\n    task: nope\n    next: b2\n  - id: a\n    task: echo\n    timeout: soon\n";
    let codes: Vec<&str> = diags(src).iter().map(|d| d.code).collect();
    for c in ["unknown-task", "unknown-step", "duplicate-step", "bad-duration"] {
        assert!(codes.contains(&c), "{codes:?} lacks {c}");
    }
}

#[test]
fn examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let src = std::fs::read_to_string(&path).expect("read");
            let d = diags(&src);
            assert!(d.is_empty(), "{}: {:?}", path.display(), d);
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn guarded_references_are_accepted() {
    // A loop reading its previous visit; a join reading an optional step.
    let looping = "name: w\nsteps:\n  - id: count\n    task: increment\n    with: \"{{ steps.count.output if steps.count is defined else {} }}\"\n    max_visits: 5\n  - id: again\n    branch: { if: 'steps.count.output.counter < 3', then: count }\n";
    assert!(diags(looping).is_empty(), "{:?}", diags(looping));
    let optional = "name: w\nsteps:\n  - id: pick\n    branch: { if: 'true', then: maybe, else: after }\n  - id: maybe\n    task: echo\n  - id: after\n    branch: { if: 'has(steps.maybe)', then: end, else: end }\n";
    assert!(diags(optional).is_empty(), "{:?}", diags(optional));
    // Unguarded, the same references are refused.
    check(&looping.replace(" if steps.count is defined else {} ", " "), "self-reference", 3, &["previous visit"]);
}

#[test]
fn waits_need_one_valid_duration_or_instant() {
    check("name: w\nsteps:\n  - id: p\n    wait: {}\n", "bad-wait", 3, &["`for`", "`until`"]);
    check("name: w\nsteps:\n  - id: p\n    wait: { for: soon }\n", "bad-duration", 4, &["soon"]);
    check(
        "name: w\nsteps:\n  - id: p\n    wait: { until: 'tomorrow' }\n",
        "bad-instant",
        3,
        &["tomorrow", "2026-12-01T09:00:00Z"],
    );
    assert!(diags("name: w\nsteps:\n  - id: p\n    wait: { until: '2026-12-01T09:00:00Z' }\n").is_empty());
}

#[test]
fn step_ids_must_be_referable_from_templates() {
    check(
        "name: w\nsteps:\n  - id: book-hotel\n    task: echo\n",
        "bad-step-id",
        3,
        &["book-hotel", "`book_hotel` would work"],
    );
}

#[test]
fn compensations_are_checked() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    compensate: undo_b\ncompensations:\n  - id: undo_a\n    task: echo\n",
        "unknown-compensation",
        5,
        &["undo_b", "did you mean `undo_a`"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    compensate: undo\ncompensations:\n  - id: undo\n    task: echo\n    next: a\n",
        "bad-compensation",
        7,
        &["only do work"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\ncompensations:\n  - id: a\n    task: echo\n",
        "duplicate-step",
        6,
        &["`a`"],
    );
}

#[test]
fn schemas_must_be_valid_json_schemas() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    output_contract: { type: 12 }\n",
        "bad-schema",
        3,
        &["output_contract", "not a valid JSON Schema"],
    );
    check(
        "name: w\ninputs: { type: object, properties: { n: { minimum: x } } }\nsteps:\n  - id: a\n    task: echo\n",
        "bad-schema",
        2,
        &["`inputs`"],
    );
}

const NESTED_REFS: &str = r#"name: refs
inputs: { type: object, properties: { xs: { type: array } } }
steps:
  - id: first
    task: echo
  - id: fan
    parallel:
      branches:
        - name: a
          steps:
            - id: a1
              task: echo
              with: { w: "{{ steps.first.output }}" }
        - name: b
          steps:
            - id: b1
              task: echo
              with: { v: "{{ steps.a1.output }}" }
  - id: each
    map:
      items: "{{ inputs.xs }}"
      steps:
        - id: m1
          task: echo
          with: { i: "{{ item }}", f: "{{ steps.fan.output.a }}", g: "{{ steps.each.output }}" }
        - id: m2
          task: echo
          with: "{{ steps.m1.output }}"
  - id: after
    transform: { x: "{{ steps.a1.output }}", y: "{{ steps.m1.output }}", z: "{{ steps.fan.output.a }}" }
"#;

#[test]
fn nested_steps_see_what_ran_before_their_container_and_nothing_of_their_siblings() {
    check(NESTED_REFS, "maybe-not-run", 16, &["`steps.a1`", "branch `a` of parallel `fan`", "steps.fan.output.a"]);
    check(NESTED_REFS, "self-reference", 23, &["inside `each`", "`item`"]);
    check(NESTED_REFS, "nested-step-reference", 29, &["`steps.a1`", "inside parallel `fan`", "steps.fan.output.a"]);
    check(NESTED_REFS, "nested-step-reference", 29, &["`steps.m1`", "once per item inside map `each`"]);
    // `steps.first` in a branch, `steps.fan` in the map body and `steps.m1`
    // within its own iteration are fine.
    let all = diags(NESTED_REFS);
    assert_eq!(all.len(), 4, "{all:#?}");
}

#[test]
fn parallel_and_map_shapes_are_checked() {
    let src = r#"name: bad
steps:
  - id: first
    task: echo
  - id: fan
    timeout: 5s
    parallel:
      max_concurrency: 0
      branches:
        - name: a
          steps:
            - id: a1
              task: echo
              next: first
        - name: a
          steps:
            - id: b1
              task: echo
  - id: each
    map:
      items: 5
      steps:
        - id: m1
          task: echo
          compensate: undo
  - id: none
    parallel: { branches: [] }
compensations:
  - id: undo
    task: echo
"#;
    check(src, "bad-concurrency", 5, &["`max_concurrency` must be at least 1"]);
    check(src, "misplaced-field", 6, &["`timeout`", "steps inside it"]);
    check(src, "jump-across-blocks", 14, &["`first`", "same sequence"]);
    check(src, "duplicate-branch", 15, &["branch `a`", "line 10"]);
    check(src, "bad-items", 19, &["`items` is 5", "inputs.orders"]);
    check(src, "misplaced-field", 25, &["inside a `map`", "compensate the `map` step"]);
    check(src, "empty-parallel", 26, &["no branches"]);
}

#[test]
fn ids_are_unique_across_nesting_and_child_workflows_are_named() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n  - id: m\n    map:\n      items: [1]\n      steps:\n        - id: a\n          task: echo\n",
        "duplicate-step",
        9,
        &["`a`", "line 3"],
    );
    check("name: w\nsteps:\n  - id: c\n    workflow: { name: 'no good' }\n", "bad-name", 4, &["no good"]);
    let w = parse(
        "name: w\nsteps:\n  - id: c\n    workflow: { name: child, inputs: { n: 1 } }\n  - id: d\n    workflow: { name: child }\n",
        "wf.yaml",
        BUILTIN_TASKS,
    )
    .expect("valid");
    assert_eq!(w.children, vec!["child".to_owned()]);
}

#[test]
fn an_unquoted_yaml_boolean_in_required_is_named() {
    check(
        "name: w\ninputs: { type: object, properties: { n: { type: integer } }, required: [n] }\nsteps:\n  - id: a\n    task: echo\n",
        "bad-schema",
        2,
        &["`required` lists the boolean false", "the property `n`", "required: [\"n\"]"],
    );
}

/// What validates, runs: a template may read only the roots that exist at
/// run time and use only the filters, tests and functions the template
/// engine has (before, `env.HOME` and `| tojson` validated and then failed
/// the run).
#[test]
fn templates_use_only_what_exists_at_run_time() {
    let t = |expr: &str| format!("name: w\nsteps:\n  - id: t\n    transform: {{ x: '{expr}' }}\n");
    check(&t("{{ env.HOME }}"), "bad-template", 3, &["`env` is not defined", "inputs"]);
    check(&t("{{ inputs.x | nosuch }}"), "bad-template", 3, &["unknown filter `nosuch`"]);
    check(&t("{{ inputs.x is nosuch }}"), "bad-template", 3, &["unknown test `nosuch`"]);
    check(&t("{{ nosuch(1) }}"), "bad-template", 3, &["unknown function `nosuch`"]);
    check(&t("a {{ inputs.x | upper | nosuch2 }} b"), "bad-template", 3, &["unknown filter `nosuch2`"]);
    for ok in [
        "{{ inputs.x | tojson }}",
        "{{ inputs.x | default(1) }}",
        "{{ inputs.x is defined }}",
        "{{ inputs.x is not none }}",
        "{% for i in range(3) %}{{ i }}{% endfor %}",
        "{{ \"a | b\" ~ inputs.x }}",
        "{{ steps.t.output if steps.t is defined else 0 }}",
    ] {
        assert_eq!(diags(&t(ok)), Vec::new(), "{ok}");
    }
}

/// Every filter and test the docs list exists at run time and renders.
#[test]
fn the_documented_filters_tests_and_functions_exist() {
    use cairn_core::template::{Callable, exists};
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/workflow-language.md")).expect("docs");
    let listed = |label: &str| -> Vec<String> {
        let line = doc.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("docs list `{label}`"));
        line.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    };
    for (label, kind) in [
        ("- **Filters:**", Callable::Filter),
        ("- **Tests:**", Callable::Test),
        ("- **Functions:**", Callable::Function),
    ] {
        let names = listed(label);
        assert!(names.len() >= 3, "{label}: {names:?}");
        for n in names {
            assert!(exists(kind, &n), "{label} lists `{n}`, which the template engine does not have");
        }
    }
    let out = cairn_core::template::render(
        &serde_json::json!("{{ inputs.x | tojson }}"),
        &serde_json::json!({ "inputs": { "x": { "a": 1 } } }).into(),
    )
    .expect("tojson renders");
    assert_eq!(out, serde_json::json!("{\"a\": 1}"));
}

/// Every unknown field is named at once, each where it is written with a
/// suggestion, and the rest of the file is still checked (before, the first
/// unknown field hid every other problem).
#[test]
fn every_unknown_field_and_every_other_problem_at_once() {
    let src = "name: w\nsteps:\n  - id: a\n    task: nope\n    retyr:\n      max_attempts: 3\n    next: b2\n  - id: b\n    task: echo\n    timeout: soon\n    colour: blue\noutput:\n  x: 1\n  y: 2\n";
    let all = diags(src);
    let summary: Vec<(&str, u64)> = all.iter().map(|d| (d.code, d.line)).collect();
    for want in
        [("unknown-field", 5), ("unknown-field", 11), ("unknown-task", 4), ("unknown-step", 7), ("bad-duration", 10)]
    {
        assert!(summary.contains(&want), "{want:?} missing from {summary:?}");
    }
    let retyr = all.iter().find(|d| d.line == 5).expect("retyr");
    assert!(retyr.to_string().contains("did you mean `retry`"), "{retyr}");
    assert_eq!(retyr.column, 5);
    // Flow style and a first key of an item: still every unknown field.
    let flow = diags("name: w\nsteps:\n  - idd: a\n    task: echo\n    retry: { max_attemps: 3 }\n");
    let codes: Vec<(&str, u64)> = flow.iter().map(|d| (d.code, d.line)).collect();
    assert!(codes.contains(&("unknown-field", 3)) && codes.contains(&("unknown-field", 5)), "{codes:?}");
}

/// A reference in the workflow `output` is reported where the output is,
/// not at the workflow's name.
#[test]
fn output_references_are_reported_at_the_output() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\noutput:\n  title: '{{ steps.nope.output.t }}'\n",
        "unknown-step-reference",
        6,
        &["nope"],
    );
}

/// A secret is kept out of the log only in the form it has: a template
/// that transforms it (before: stored in clear once upper-cased, reversed
/// or sliced) is refused; inserting it as it is, also inside text, is fine.
#[test]
fn a_transformed_secret_is_refused() {
    let t = |expr: &str| format!("name: w\nsteps:\n  - id: t\n    task: echo\n    with: {{ x: \"{expr}\" }}\n");
    for bad in [
        "{{ secrets.TOKEN | upper }}",
        "{{ secrets.TOKEN | reverse }}",
        "{{ secrets.TOKEN[1:] }}",
        "{{ secrets.TOKEN ~ 'x' }}",
        "{{ [secrets.TOKEN, 'a'] | join('') }}",
        "a {% if secrets.TOKEN %}b{% endif %}",
    ] {
        check(&t(bad), "secret-transformed", 3, &["transforms a secret", "as it is"]);
    }
    for ok in ["{{ secrets.TOKEN }}", "Bearer {{ secrets.TOKEN }}", "{{secrets.TOKEN}} and {{ inputs.x | upper }}"] {
        assert!(diags(&t(ok)).iter().all(|d| d.code != "secret-transformed"), "{ok}: {:?}", diags(&t(ok)));
    }
}

/// A template cannot escape the limit on rendered output by repeating one
/// value (before: `{{ ['x' * 1000000] * inputs.n }}` with n=3000 built
/// 3 GB and crashed the server, on every restart).
#[test]
fn rendering_is_bounded_however_the_output_is_built() {
    let ctx: cairn_core::template::Scope = serde_json::json!({ "inputs": { "n": 3000 } }).into();
    for t in [
        "{{ ['x' * 1000000] * inputs.n }}",
        "{% for i in range(inputs.n) %}{{ 'x' * 1000000 }}{% endfor %}",
        "a {{ 'x' * 1000000 }}{{ 'y' * 1000000 }}",
        "{{ {'a': 'x' * 1000000, 'b': 'y' * 1000000, 'c': 'z' * 1000000, 'd': 'w' * 1000000, 'e': 'v' * 300000} }}",
    ] {
        let Err(err) = cairn_core::template::render(&serde_json::json!(t), &ctx) else {
            panic!("{t} rendered past the limit");
        };
        let limit = if t.starts_with("{{") { 4 << 20 } else { 1 << 20 };
        assert!(err.to_string().contains(&format!("more than the limit of {limit} bytes")), "{t}: {err}");
    }
    // A value that passes data on may be as large as an event: 100,000
    // numbers (about 590 KB of JSON) render from one expression.
    let many: Vec<u32> = (0..100_000).collect();
    let big: cairn_core::template::Scope = serde_json::json!({ "inputs": { "items": many } }).into();
    let out = cairn_core::template::render(&serde_json::json!("{{ inputs.items }}"), &big).expect("100k items");
    assert_eq!(out.as_array().map(Vec::len), Some(100_000));
    // Just under the limit renders.
    let ok = cairn_core::template::render(&serde_json::json!("{{ 'x' * 1000000 }}"), &ctx).expect("1 MB");
    assert_eq!(ok.as_str().map(str::len), Some(1_000_000));
}

/// A condition's cost is estimated at validation where the inputs bound
/// it: 3 nested comprehensions over input lists of up to 200 items (8
/// million evaluations) is refused before anything runs; 50 items (125,000)
/// is fine, and without `maxItems` the bound is checked when it runs.
#[test]
fn a_condition_over_bounded_inputs_past_its_cost_is_refused_at_validation() {
    let wf = |max: &str| {
        format!(
            "name: w\ninputs:\n  type: object\n  properties:\n    items: {{ type: array, items: {{ type: integer }}{max} }}\nsteps:\n  - id: b\n    branch: {{ if: \"inputs.items.all(a, inputs.items.all(b, inputs.items.exists(c, a + b == c)))\", then: done }}\n  - id: done\n    transform: {{ ok: true }}\n"
        )
    };
    check(&wf(", maxItems: 200"), "condition-too-costly", 8, &["200 items", "8000000", "1000000", "maxItems"]);
    assert!(diags(&wf(", maxItems: 50")).is_empty(), "{:?}", diags(&wf(", maxItems: 50")));
    assert!(diags(&wf("")).is_empty(), "unbounded inputs: checked at run time");
}

/// Found by the `template` fuzz target: a block whose opening and closing
/// overlap (`{%}`) made the check of a workflow's templates panic (slicing
/// past its own end); `cairn validate` crashed and `POST /workflows`
/// answered 500. It is a diagnostic now.
#[test]
fn a_template_whose_delimiters_overlap_is_a_diagnostic_not_a_panic() {
    let found =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/template/open-close-overlap"))
            .expect("the fuzz finding");
    for t in ["{%}", "x {%} y", "{{}}", "a {%}}b{% or%}", found.as_str()] {
        let src = format!(
            "name: w\nsteps:\n  - id: t\n    transform: {{ v: {} }}\n",
            serde_json::to_string(t).expect("json")
        );
        let _ = diags(&src);
        let _ = cairn_core::template::check(&serde_json::json!(t));
    }
}

/// Found by the `template` fuzz target: text of about a megabyte of NUL
/// characters renders within the text bound (1 MiB), but its JSON is six
/// times that (`\u0000`): more than an event may hold. The render is
/// bounded as promised, and the limit on what is written refuses the value
/// (a step with it fails with kind `limit`; nothing is written).
#[test]
fn rendered_text_that_escapes_past_the_event_limit_is_refused_when_written() {
    let found =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/template/text-of-nuls-escapes-six-fold"))
            .expect("the fuzz finding");
    let text = String::from_utf8(found).expect("utf-8");
    let tpl = text.split_once('\n').map_or(text.as_str(), |(t, _)| t);
    let ctx: cairn_core::template::Scope = serde_json::json!({ "inputs": {} }).into();
    let out = cairn_core::template::render(&serde_json::json!(tpl), &ctx).expect("renders within its bounds");
    let rendered = out.as_str().expect("text");
    assert!(rendered.len() <= cairn_core::template::MAX_RENDERED_BYTES, "{} bytes", rendered.len());
    let json = serde_json::to_string(&serde_json::json!({ "v": out })).expect("json");
    assert!(json.len() > cairn_events::limits::Limits::default().max_event_bytes, "{} bytes of JSON", json.len());
    let refused = cairn_events::limits::Limits::default().check_payload(&json);
    assert!(refused.is_err(), "the limit on what is written refuses it");
}

#[test]
fn guards_are_checked_like_conditions() {
    // A guard that does not parse, one reading a step that does not exist.
    check("name: w\nsteps:\n  - id: a\n    when: 'inputs.n >'\n    task: echo\n", "bad-expression", 4, &["inputs.n >"]);
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n  - id: b\n    when: steps.aa.output.ok\n    task: echo\n",
        "unknown-step-reference",
        6,
        &["steps.aa", "did you mean `steps.a`"],
    );
    // A guard reading a step that runs after it.
    check(
        "name: w\nsteps:\n  - id: a\n    when: steps.b.output.ok\n    task: echo\n  - id: b\n    task: echo\n",
        "maybe-not-run",
        4,
        &["steps.b"],
    );
}

#[test]
fn a_step_after_a_guarded_one_must_guard_its_reads_of_it() {
    let src = "name: w\nsteps:\n  - id: a\n    when: inputs.go\n    task: echo\n  - id: b\n    task: echo\n    with: '{{ steps.a.output }}'\n";
    check(src, "maybe-not-run", 6, &["steps.a", "skipped when its guard `inputs.go` is false", "is defined"]);
    // Guarded, it is fine; so is reading it inside a later container.
    let ok = "name: w\nsteps:\n  - id: a\n    when: inputs.go\n    task: echo\n  - id: b\n    task: echo\n    with: \"{{ steps.a.output if steps.a is defined else 0 }}\"\n";
    assert!(diags(ok).is_empty(), "{:?}", diags(ok));
    let inner = "name: w\nsteps:\n  - id: a\n    when: inputs.go\n    task: echo\n  - id: m\n    map:\n      items: [1]\n      steps:\n        - id: x\n          task: echo\n          with: '{{ steps.a.output }}'\n";
    check(inner, "maybe-not-run", 10, &["steps.a"]);
}

#[test]
fn a_compensation_takes_no_guard() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    compensate: undo\ncompensations:\n  - id: undo\n    when: 'true'\n    task: echo\n",
        "bad-compensation",
        7,
        &["`when`"],
    );
}

#[test]
fn catch_and_fail_are_checked() {
    // An engine error kind misspelt; a handler that does not exist.
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    catch: [{ errors: [http.stauts], next: b }]\n  - id: b\n    task: echo\n",
        "unknown-error-kind",
        5,
        &["http.stauts", "did you mean `http.status`"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    catch: [{ next: bb }]\n  - id: b\n    task: echo\n",
        "unknown-step",
        5,
        &["bb", "did you mean `b`"],
    );
    // A catch-all before another entry.
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    catch:\n      - { next: b }\n      - { errors: [timeout], next: b }\n  - id: b\n    task: echo\n",
        "unreachable-catch",
        7,
        &["earlier entry catches every error"],
    );
    // A handler reading the output of the step whose error it handles.
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    catch: [{ next: b }]\n    end: true\n  - id: b\n    task: echo\n    with: '{{ steps.a.output }}'\n",
        "caught-step-output",
        7,
        &["steps.a.error"],
    );
    // A fail step with a bad kind, or with a retry.
    check("name: w\nsteps:\n  - id: f\n    fail: { error: 'no way' }\n", "bad-error-kind", 4, &["no way"]);
    check(
        "name: w\nsteps:\n  - id: f\n    fail: { error: x }\n    retry: { max_attempts: 2 }\n",
        "misplaced-field",
        3,
        &["fail"],
    );
    // Custom kinds and families are the workflow's own: accepted.
    let ok = "name: w\nsteps:\n  - id: a\n    task: echo\n    catch: [{ errors: [card.declined, 'ai.*', timeout], next: b }]\n    end: true\n  - id: b\n    task: echo\n    with: '{{ steps.a.error }}'\n";
    assert!(diags(ok).is_empty(), "{:?}", diags(ok));
}

#[test]
fn retriers_are_checked() {
    // A list of retriers: statuses in the kind are known; a typo is not.
    let ok = "name: w\nsteps:\n  - id: a\n    task: echo\n    retry:\n      - { errors: [http.status.503, timeout], max_attempts: 6, initial_interval: 2s, max_duration: 10m }\n      - { max_attempts: 3 }\n";
    assert!(diags(ok).is_empty(), "{:?}", diags(ok));
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    retry:\n      - { errors: [http.timout], max_attempts: 2 }\n",
        "unknown-error-kind",
        6,
        &["did you mean `http.timeout`"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    retry:\n      - { errors: [http.status.999] }\n",
        "unknown-error-kind",
        6,
        &["http.status.999"],
    );
    // A retrier for every error first leaves the next nothing.
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    retry:\n      - { max_attempts: 2 }\n      - { errors: [timeout], max_attempts: 5 }\n",
        "unreachable-retrier",
        7,
        &["retrier 2 never applies"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    retry:\n      - { max_attemps: 2 }\n",
        "unknown-field",
        6,
        &["did you mean `max_attempts`"],
    );
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    retry: { max_duration: soon }\n",
        "bad-duration",
        5,
        &["soon"],
    );
}

#[test]
fn the_run_fields_are_checked() {
    check(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    with: { id: '{{ run.idd }}' }\n",
        "unknown-run-field",
        3,
        &["run.idd", "did you mean `run.id`"],
    );
    let ok = "name: w\nsteps:\n  - id: a\n    when: run.attempt == 1\n    task: echo\n    with: { id: '{{ run.id }}', at: '{{ run.started_at }}', key: '{{ run.uuid }}' }\n";
    assert!(diags(ok).is_empty(), "{:?}", diags(ok));
}

#[test]
fn objects_merge_and_values_serialise() {
    let ctx: cairn_core::template::Scope =
        serde_json::json!({ "inputs": { "a": { "x": 1, "y": 2 }, "b": { "y": 3, "z": 4 } } }).into();
    let out =
        cairn_core::template::render(&serde_json::json!("{{ inputs.a | merge(inputs.b) }}"), &ctx).expect("merge");
    assert_eq!(out, serde_json::json!({ "x": 1, "y": 3, "z": 4 }), "b wins where both have a key");
    let out = cairn_core::template::render(&serde_json::json!("{{ inputs.a | merge(inputs.b) | tojson }}"), &ctx)
        .expect("tojson");
    assert_eq!(out, serde_json::json!("{\"x\": 1, \"y\": 3, \"z\": 4}"));
    let bad =
        cairn_core::template::render(&serde_json::json!("{{ inputs.a | merge(3) }}"), &ctx).expect_err("not an object");
    assert!(bad.to_string().contains("merge takes two objects"), "{bad}");
}

#[test]
fn a_parallels_output_shape_is_checked() {
    check(
        "name: w\nsteps:\n  - id: p\n    parallel:\n      output: array\n      branches:\n        - { name: a, steps: [{ id: x, task: echo }] }\n",
        "bad-parallel-output",
        5,
        &["`list`"],
    );
}

#[test]
fn a_dags_dependencies_are_checked() {
    let src = r#"name: bad
steps:
  - id: before
    task: echo
  - id: g
    dag:
      max_concurrency: 0
      steps:
        - id: a
          depends_on: [c]
          task: echo
        - id: b
          depends_on: [a, b, a, before, nowhere, cc]
          task: echo
        - id: c
          depends_on: [b]
          task: echo
        - id: d
          next: a
          task: echo
        - id: e
          task: echo
          catch: [{ next: a }]
  - id: after
    depends_on: [g]
    task: echo
"#;
    check(src, "dag-cycle", 10, &["in a cycle", "`a` on `c`", "`c` on `b`", "`b` on `a`", "remove one"]);
    check(src, "dag-cycle", 13, &["`b` depends on itself"]);
    check(src, "duplicate-dependency", 13, &["names `a` twice"]);
    check(
        src,
        "unknown-dependency",
        13,
        &["`before`, which is not a step of dag `g`", "have completed when it starts"],
    );
    check(src, "unknown-dependency", 13, &["`nowhere`, which is no step", "the steps of dag `g`: a, b, c, d, e"]);
    check(src, "unknown-dependency", 13, &["`cc`", "did you mean `c`?"]);
    check(src, "dag-routing", 18, &["step `d` of dag `g`", "`depends_on`", "`when`"]);
    check(src, "dag-routing", 23, &["sends its caught errors to `a`", "`next: end`", "steps.e.error"]);
    check(src, "bad-concurrency", 5, &["at least 1"]);
    check(
        src,
        "misplaced-field",
        25,
        &["`after` has `depends_on`, which only a step of a `dag` takes", "dag: { steps"],
    );
    check(
        "name: e\nsteps:\n  - id: g\n    dag:\n      steps: []\n",
        "empty-dag",
        3,
        &["dag `g` has no steps", "depends_on"],
    );
}

#[test]
fn a_dag_step_reads_only_what_it_depends_on() {
    let src = r#"name: reads
steps:
  - id: before
    task: echo
  - id: g
    dag:
      steps:
        - id: a
          task: echo
          with: { x: "{{ steps.before.output }}" }
        - id: b
          task: echo
          with: { x: "{{ steps.a.output }}" }
        - id: b2
          depends_on: [a]
          task: echo
        - id: c
          depends_on: [b2, b]
          task: echo
          with: { x: "{{ steps.a.output }}", y: "{{ steps.b.output }}" }
        - id: d
          when: inputs.go
          depends_on: [c]
          task: echo
          catch: [{ next: end }]
        - id: e
          depends_on: [d]
          task: echo
          with: { x: "{{ steps.d.output }}" }
        - id: f
          depends_on: [d]
          task: echo
          with: { x: "{{ steps.d.output if steps.d is defined else 0 }}" }
  - id: after
    task: echo
    with: { x: "{{ steps.c.output }}", ok: "{{ steps.g.output.c }}" }
"#;
    check(
        src,
        "maybe-not-run",
        11,
        &["`steps.a`", "not among its dependencies in dag `g`", "add `a` to the `depends_on` of `b`"],
    );
    check(src, "maybe-not-run", 26, &["`steps.d`", "its `when` guard may skip it", "steps.d is defined"]);
    check(src, "nested-step-reference", 34, &["`steps.c`, which is inside dag `g`", "steps.g.output.c"]);
    // `before` from a dag step, `a` through `b` from `c`, the guarded read in `f`: fine.
    let all = diags(src);
    assert_eq!(all.len(), 3, "{all:#?}");
}

#[test]
fn an_approvals_fields_are_checked_like_a_forms() {
    let src = r#"name: pay
steps:
  - id: ok
    approval:
      approvers: [boss]
      fields:
        - { name: amount, type: numbr }
        - { name: approved, type: boolean }
        - { name: note }
        - { name: note }
  - id: after
    transform: { x: "{{ steps.ok.output.values.amount }}", y: "{{ steps.ok.output.valeus }}" }
"#;
    check(src, "bad-field", 7, &["numbr", "did you mean `number`?"]);
    check(src, "bad-approval", 8, &["cannot be named `approved`"]);
    check(src, "bad-approval", 10, &["two fields named `note`"]);
    // Its output contract has `values` once it has fields.
    let good = src
        .replace("type: numbr", "type: number")
        .replace("        - { name: approved, type: boolean }\n", "")
        .replace("        - { name: note }\n        - { name: note }\n", "        - { name: note }\n");
    check(&good, "unknown-output-field", 9, &["`steps.ok.output.valeus`", "did you mean `values`?"]);
    assert_eq!(diags(&good).len(), 1, "{:#?}", diags(&good));
}

#[test]
fn the_time_is_a_steps_and_not_the_outputs() {
    let src = "name: t\nsteps:\n  - id: a\n    transform: { at: '{{ run.now }}' }\n    when: run.now > '2026-01-01'\noutput: { at: '{{ run.now }}' }\n";
    check(src, "misplaced-run-field", 6, &["`run.now`", "transform"]);
    assert_eq!(diags(src).len(), 1, "{:#?}", diags(src));
}

#[test]
fn queue_steps_are_checked() {
    let src = r#"name: q
steps:
  - id: a
    queue: "no spaces"
    with: { x: 1 }
  - id: b
    queue: fine.name
    heartbeat_timeout: 100ms
  - id: c
    task: echo
    heartbeat_timeout: 5s
  - id: d
    queue: pay
    with: { key: "{{ secrets.STRIPE_KEY }}" }
"#;
    check(src, "bad-queue-name", 4, &["no spaces", "letters, digits"]);
    check(src, "bad-heartbeat-timeout", 8, &["100ms", "under a second"]);
    check(src, "misplaced-field", 11, &["`heartbeat_timeout`", "only a `queue` step"]);
    check(src, "secret-to-queue", 13, &["`pay`", "own environment"]);
    // A well-formed one is valid, `with` and all.
    let ok = "name: ok\nsteps:\n  - id: a\n    queue: triage.clean\n    with: { t: '{{ inputs.t }}' }\n    \
              heartbeat_timeout: 10s\n    timeout: 5m\n    retry: { max_attempts: 3 }\n";
    assert!(diags(ok).is_empty(), "{:?}", diags(ok));
}
