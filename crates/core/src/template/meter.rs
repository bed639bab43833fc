//! The working memory of one render is metered.
//!
//! Fuel bounds how many instructions a template runs, and the output limits
//! bound what it produces, but neither bounds what it builds on the way:
//! `{{ ('x' * 100000000) | length }}` allocates 100 MB for a two-digit
//! answer, `{% set a = s ~ s %}{% set b = a ~ a %}…` doubles per line, and a
//! list literal of a thousand `inputs.text` copies the input a thousand
//! times. minijinja has no setting for this, so every compiled program is
//! rewritten before it runs (through minijinja's `unstable_machinery`,
//! hence its exact version in the workspace):
//!
//! - the operators that build values (`+`, `*`, `~`, slices) become calls to
//!   metered functions that check the size of what they would build
//!   *before* building it, then do exactly what the operator did;
//! - every text the template writes (its own text and each `{{ … }}`) is
//!   counted against [`super::MAX_RENDERED_BYTES`] before it is written,
//!   captures (`{% set x %}…{% endset %}`) included;
//! - every filter and function is wrapped: those whose result can be far
//!   larger than their arguments (`indent`, `replace`, `join`, `format`,
//!   `batch`, `slice`, `tojson`) are checked before they run, and the size of
//!   every result is charged after;
//! - each string read from the run's data is charged as it is converted.
//!
//! A render may build at most [`MAX_RENDER_WORK`] bytes in all; past it the
//! render fails with an error that names the limit. Nothing is allocated
//! before it is charged except results no larger than what they were made
//! from.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

/// Most bytes one render may build: strings, lists and maps it makes on the
/// way to its result, counted when made (shared values are counted once,
/// where they were made).
pub const MAX_RENDER_WORK: usize = 64 << 20;

/// The indent `tojson` accepts at most.
pub const MAX_JSON_INDENT: usize = 16;

/// What one list item or map entry costs, in bytes.
const ITEM: usize = std::mem::size_of::<Value>();

/// Names the rewritten programs call; a template may not define or call them.
pub(super) const RESERVED: &str = "__cairn";
const ADD: &str = "__cairn_add";
const MUL: &str = "__cairn_mul";
const CONCAT: &str = "__cairn_concat";
const SLICE: &str = "__cairn_slice";
const EMIT: &str = "__cairn_emit";
const EMIT_RAW: &str = "__cairn_emit_raw";

thread_local! {
    /// Work left to this thread's render; `usize::MAX` outside of one.
    static WORK: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Output left to this thread's render.
    static OUTPUT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Which limit stopped the render, if one did.
    static STOPPED: Cell<Option<Limit>> = const { Cell::new(None) };
}

/// A limit a render reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// [`MAX_RENDER_WORK`].
    Work,
    /// The output limit the meter was started with.
    Output,
}

/// The budget of one render on this thread, from creation to drop (renders
/// do not nest, but a guard restores what was there).
pub(super) struct Meter {
    saved: (usize, usize, Option<Limit>),
}

impl Meter {
    pub(super) fn start(output: usize) -> Meter {
        let saved = (WORK.get(), OUTPUT.get(), STOPPED.get());
        WORK.set(MAX_RENDER_WORK);
        OUTPUT.set(output);
        STOPPED.set(None);
        Meter { saved }
    }

    /// The limit that stopped this render, if one did.
    pub(super) fn stopped(&self) -> Option<Limit> {
        STOPPED.get()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        WORK.set(self.saved.0);
        OUTPUT.set(self.saved.1);
        STOPPED.set(self.saved.2);
    }
}

fn take(cell: &'static std::thread::LocalKey<Cell<usize>>, bytes: usize, limit: Limit) -> Result<(), Error> {
    let left = cell.get();
    if left == usize::MAX {
        return Ok(());
    }
    match left.checked_sub(bytes) {
        Some(rest) => {
            cell.set(rest);
            Ok(())
        }
        None => {
            cell.set(0);
            STOPPED.set(Some(limit));
            Err(Error::new(
                ErrorKind::InvalidOperation,
                match limit {
                    Limit::Work => format!(
                        "the template builds more than {MAX_RENDER_WORK} bytes of strings and lists on the way \
                         to its result; build less (no repeated or doubled strings) or pass the data through unchanged"
                    ),
                    Limit::Output => "the rendered text is over its limit".to_owned(),
                },
            ))
        }
    }
}

/// Charges `bytes` to the render's work.
pub(super) fn charge(bytes: usize) -> Result<(), Error> {
    take(&WORK, bytes, Limit::Work)
}

fn charge_output(bytes: usize) -> Result<(), Error> {
    take(&OUTPUT, bytes, Limit::Output)?;
    charge(bytes)
}

/// What making `v` cost, shallowly: a string its bytes, a list or map its
/// entries (the items are shared, not copied).
fn size(v: &Value) -> usize {
    match v.kind() {
        ValueKind::String | ValueKind::Bytes => {
            v.as_str().map_or_else(|| v.as_bytes().map_or(0, <[u8]>::len), str::len)
        }
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => v.len().unwrap_or(0).saturating_mul(ITEM),
        _ => 0,
    }
}

/// A number used as a count, as minijinja would read it: negative is none,
/// and one past `i64` (a `u64` or 128-bit literal, or a large float) is as
/// many as there can be, so a check made with it refuses rather than passes.
fn count(v: &Value) -> Option<usize> {
    if v.kind() != ValueKind::Number {
        return None;
    }
    if let Some(n) = v.as_i64() {
        return Some(usize::try_from(n).unwrap_or(0));
    }
    let text = v.to_string();
    if let Ok(n) = text.parse::<i128>() {
        return Some(if n < 0 { 0 } else { usize::try_from(n).unwrap_or(usize::MAX) });
    }
    if text.parse::<u128>().is_ok() {
        return Some(usize::MAX);
    }
    // A float: `as` saturates, and NaN is zero.
    text.parse::<f64>().ok().map(|f| if f > 0.0 { f as usize } else { 0 })
}

/// What `a * b` would build, if it repeats a string or a list.
fn repeated(a: &Value, b: &Value) -> usize {
    let one = |s: &Value, n: &Value| match (s.kind(), count(n)) {
        (ValueKind::String, Some(n)) => Some(size(s).saturating_mul(n)),
        (ValueKind::Seq | ValueKind::Iterable, Some(n)) => {
            Some(s.len().unwrap_or(0).saturating_mul(n).saturating_mul(ITEM))
        }
        _ => None,
    };
    one(a, b).or_else(|| one(b, a)).unwrap_or(0)
}

/// An operator, run by minijinja itself in an environment of its own: the
/// same instruction on the same values, once checked.
#[derive(Clone, Copy)]
enum Op {
    Add,
    Mul,
    Concat,
    Slice,
}

/// The source of each [`Op`], in its order.
const OPERATORS: [&str; 4] = ["a + b", "a * b", "a ~ b", "a[b:c:d]"];

/// The operands `a`, `b`, `c`, `d` of an operator: read by name, without
/// building a map.
#[derive(Debug)]
struct Operands([Value; 4]);

impl minijinja::value::Object for Operands {
    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        let i = match key.as_str()? {
            "a" => 0,
            "b" => 1,
            "c" => 2,
            "d" => 3,
            _ => return None,
        };
        Some(self.0[i].clone())
    }
}

fn run(op: Op, operands: [Value; 4]) -> Result<Value, Error> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    static COMPILED: OnceLock<Vec<minijinja::Expression<'static, 'static>>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(|| {
        let env = ENV.get_or_init(|| {
            let mut env = Environment::empty();
            env.set_undefined_behavior(UndefinedBehavior::Strict);
            env
        });
        OPERATORS.iter().map(|s| env.compile_expression(s).expect("an operator compiles")).collect()
    });
    compiled[op as usize].eval(Value::from_object(Operands(operands)))
}

/// Adds the metered operators, filters and functions to `env`.
pub(super) fn install(env: &mut Environment<'static>) {
    env.add_function(ADD, |a: Value, b: Value| {
        let need = match (a.kind(), b.kind()) {
            (ValueKind::String, ValueKind::String) => size(&a).saturating_add(size(&b)),
            (ValueKind::Seq | ValueKind::Iterable, ValueKind::Seq | ValueKind::Iterable) => {
                a.len().unwrap_or(0).saturating_add(b.len().unwrap_or(0)).saturating_mul(ITEM)
            }
            _ => 0,
        };
        charge(need)?;
        run(Op::Add, [a, b, Value::UNDEFINED, Value::UNDEFINED])
    });
    env.add_function(MUL, |a: Value, b: Value| {
        charge(repeated(&a, &b))?;
        run(Op::Mul, [a, b, Value::UNDEFINED, Value::UNDEFINED])
    });
    env.add_function(CONCAT, |a: Value, b: Value| {
        // Charged before for what is known (strings and lists), after for
        // the rest of what the text of other values came to.
        let known = size(&a).saturating_add(size(&b));
        charge(known)?;
        let out = run(Op::Concat, [a, b, Value::UNDEFINED, Value::UNDEFINED])?;
        charge(size(&out).saturating_sub(known))?;
        Ok(out)
    });
    env.add_function(SLICE, |a: Value, b: Value, c: Value, d: Value| {
        let out = run(Op::Slice, [a, b, c, d])?;
        charge(size(&out))?;
        Ok(out)
    });
    env.add_function(EMIT, |v: Value| {
        let bytes = match v.as_str() {
            Some(s) => s.len(),
            None => v.to_string().len(),
        };
        charge_output(bytes)?;
        Ok(v)
    });
    env.add_function(EMIT_RAW, |n: usize| {
        charge_output(n)?;
        Ok(Value::UNDEFINED)
    });

    let filters: Vec<(&'static str, Value)> = {
        use minijinja::filters as f;
        vec![
            ("safe", Value::from_function(f::safe)),
            ("escape", Value::from_function(f::escape)),
            ("e", Value::from_function(f::escape)),
            ("lower", Value::from_function(f::lower)),
            ("upper", Value::from_function(f::upper)),
            ("title", Value::from_function(f::title)),
            ("capitalize", Value::from_function(f::capitalize)),
            ("replace", Value::from_function(f::replace)),
            ("length", Value::from_function(f::length)),
            ("count", Value::from_function(f::length)),
            ("dictsort", Value::from_function(f::dictsort)),
            ("items", Value::from_function(f::items)),
            ("reverse", Value::from_function(f::reverse)),
            ("trim", Value::from_function(f::trim)),
            ("join", Value::from_function(f::join)),
            ("split", Value::from_function(f::split)),
            ("lines", Value::from_function(f::lines)),
            ("default", Value::from_function(f::default)),
            ("d", Value::from_function(f::default)),
            ("round", Value::from_function(f::round)),
            ("abs", Value::from_function(f::abs)),
            ("int", Value::from_function(f::int)),
            ("float", Value::from_function(f::float)),
            ("attr", Value::from_function(f::attr)),
            ("first", Value::from_function(f::first)),
            ("last", Value::from_function(f::last)),
            ("min", Value::from_function(f::min)),
            ("max", Value::from_function(f::max)),
            ("sort", Value::from_function(f::sort)),
            ("list", Value::from_function(f::list)),
            ("string", Value::from_function(f::string)),
            ("bool", Value::from_function(f::bool)),
            ("batch", Value::from_function(f::batch)),
            ("slice", Value::from_function(f::slice)),
            ("sum", Value::from_function(f::sum)),
            ("indent", Value::from_function(f::indent)),
            ("select", Value::from_function(f::select)),
            ("reject", Value::from_function(f::reject)),
            ("selectattr", Value::from_function(f::selectattr)),
            ("rejectattr", Value::from_function(f::rejectattr)),
            ("map", Value::from_function(f::map)),
            ("groupby", Value::from_function(f::groupby)),
            ("unique", Value::from_function(f::unique)),
            ("chain", Value::from_function(f::chain)),
            ("zip", Value::from_function(f::zip)),
            ("pprint", Value::from_function(f::pprint)),
            ("format", Value::from_function(f::format)),
            ("tojson", Value::from_function(f::tojson)),
            ("merge", Value::from_function(merge)),
        ]
    };
    for (name, inner) in filters {
        env.add_filter(name, metered(name, inner));
    }
    let globals: BTreeMap<String, Value> = env.globals().map(|(k, v)| (k.to_owned(), v)).collect();
    for name in ["range", "dict", "namespace"] {
        let inner = globals.get(name).cloned().expect("a builtin function");
        env.add_global(name, Value::from_function(metered(name, inner)));
    }
    // `debug()` shows the state it is called in.
    env.add_function("debug", |state: &State, args: Rest<Value>| {
        let out = minijinja::functions::debug(state, args);
        charge(out.len())?;
        Ok(out)
    });
}

/// `inner`, checked before it runs where its result can outgrow its
/// arguments, and charged with the size of its result.
fn metered(
    name: &'static str,
    inner: Value,
) -> impl Fn(&mut State, Rest<Value>, Kwargs) -> Result<Value, Error> + Send + Sync {
    move |state: &mut State, args: Rest<Value>, kwargs: Kwargs| {
        let mut args = args.0;
        // Passed on as they came: keyword arguments last.
        let keys: Vec<String> = kwargs.args().map(str::to_owned).collect();
        if !keys.is_empty() {
            let pairs: Vec<(String, Value)> =
                keys.into_iter().map(|k| kwargs.get::<Value>(&k).map(|v| (k, v))).collect::<Result<_, _>>()?;
            args.push(Value::from(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect::<Kwargs>()));
        }
        charge(before(name, &args)?)?;
        let out = inner.call(state, &args)?;
        charge(size(&out))?;
        Ok(out)
    }
}

/// The positional argument `i` after the value a filter is applied to, or
/// the keyword argument `key`.
fn arg(args: &[Value], i: usize, key: &str) -> Option<Value> {
    let (kwargs, positional) = match args.last() {
        Some(last) if last.is_kwargs() => (Some(last), &args[..args.len() - 1]),
        _ => (None, args),
    };
    positional.get(i + 1).cloned().or_else(|| kwargs.and_then(|k| k.get_attr(key).ok()).filter(|v| !v.is_undefined()))
}

/// What a filter or function is sure to build, from its arguments alone.
fn before(name: &str, args: &[Value]) -> Result<usize, Error> {
    let Some(v) = args.first() else { return Ok(0) };
    let text = v.as_str().unwrap_or("");
    let n = |i: usize, key: &str| arg(args, i, key).as_ref().and_then(count).unwrap_or(0);
    let len = |i: usize, key: &str| arg(args, i, key).map_or(0, |s| size(&s));
    Ok(match name {
        // A string `width` is the indent itself.
        "indent" => {
            let width = arg(args, 0, "width").map_or(0, |w| count(&w).unwrap_or_else(|| size(&w)));
            text.len().saturating_add((text.matches('\n').count() + 1).saturating_mul(width))
        }
        "replace" => {
            let from = arg(args, 0, "from").and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
            let times = if from.is_empty() { text.chars().count() + 1 } else { text.matches(from.as_str()).count() };
            text.len().saturating_add(times.saturating_mul(len(1, "to")))
        }
        "join" => v.len().unwrap_or(0).saturating_mul(len(0, "d")),
        "format" => {
            // A width or precision (`%100000d`) pads to that many bytes.
            let widths: usize = text
                .split('%')
                .skip(1)
                .map(|spec| {
                    spec.split(|c: char| !c.is_ascii_digit())
                        .filter_map(|d| d.parse::<usize>().ok())
                        .fold(0usize, usize::saturating_add)
                })
                .fold(0, usize::saturating_add);
            text.len().saturating_add(widths)
        }
        // The last batch or slice is filled up to `count` items.
        "batch" | "slice" => n(0, "count").saturating_mul(ITEM),
        "tojson" => {
            let indent = arg(args, 0, "indent").map_or(0, |i| count(&i).unwrap_or(0));
            if indent > MAX_JSON_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson indents by at most {MAX_JSON_INDENT} spaces, not {indent}"),
                ));
            }
            0
        }
        _ => 0,
    })
}

/// A template's program with the metering of this module woven in.
pub(super) fn rewrite<'s>(old: &Instructions<'s>) -> Result<Instructions<'s>, String> {
    let mut new = Instructions::new(old.name(), old.source());
    let mut at: Vec<u32> = Vec::new();
    let mut next: u32 = 0;
    let push = |new: &mut Instructions<'s>, i: u32, ins: Instruction<'s>| {
        match old.get_span(i) {
            Some(span) => new.add_with_span(ins, span),
            None => match old.get_line(i) {
                Some(line) => new.add_with_line(ins, u16::try_from(line).unwrap_or(u16::MAX)),
                None => new.add(ins),
            },
        };
    };
    let mut i = 0;
    while let Some(ins) = old.get(i) {
        at.push(next);
        let reserved = |n: &str| n.starts_with(RESERVED);
        match ins {
            Instruction::Lookup(n) | Instruction::StoreLocal(n) | Instruction::CallFunction(n, _) if reserved(n) => {
                return Err(format!("names starting with `{RESERVED}` are reserved; rename `{n}`"));
            }
            _ => {}
        }
        let replaced: Vec<Instruction<'s>> = match ins {
            Instruction::Add => vec![Instruction::CallFunction(ADD, Some(2))],
            Instruction::Mul => vec![Instruction::CallFunction(MUL, Some(2))],
            Instruction::StringConcat => vec![Instruction::CallFunction(CONCAT, Some(2))],
            Instruction::Slice => vec![Instruction::CallFunction(SLICE, Some(4))],
            Instruction::Emit => vec![Instruction::CallFunction(EMIT, Some(1)), Instruction::Emit],
            Instruction::EmitRaw(s) => vec![
                Instruction::LoadConst(Value::from(s.len())),
                Instruction::CallFunction(EMIT_RAW, Some(1)),
                Instruction::DiscardTop,
                Instruction::EmitRaw(s),
            ],
            other => vec![other.clone()],
        };
        for ins in replaced {
            push(&mut new, i, ins);
            next += 1;
        }
        i += 1;
    }
    at.push(next);
    // Jumps go to the new place of their old target.
    let target = |t: &u32| at.get(*t as usize).copied().unwrap_or(next);
    for j in 0..next {
        if let Some(
            Instruction::Jump(t)
            | Instruction::JumpIfFalse(t)
            | Instruction::JumpIfFalseOrPop(t)
            | Instruction::JumpIfTrueOrPop(t)
            | Instruction::Iterate(t),
        ) = new.get_mut(j)
        {
            *t = target(t);
        }
    }
    Ok(new)
}

/// `a | merge(b)`: the members of object `a` with those of `b` over them (a
/// shallow merge: `b` wins where both have a key).
fn merge(a: Value, b: Value) -> Result<Value, minijinja::Error> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for v in [&a, &b] {
        if v.kind() != minijinja::value::ValueKind::Map {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("merge takes two objects; got {}", v.kind()),
            ));
        }
        for k in v.try_iter()? {
            let item = v.get_item(&k)?;
            out.insert(k.to_string(), item);
        }
    }
    Ok(Value::from(out))
}
