//! Templates: `{{ inputs.topic }}`, `{{ steps.draft.output.title }}` in any
//! string of a step's input or output. Rendered in a sandbox (minijinja with
//! fuel, a recursion limit and strict undefined values), never with I/O.
//!
//! A string that is exactly one `{{ expression }}` renders to the value
//! itself (a number stays a number, an object an object); any other string
//! with a template renders to a string. Values that came from inputs, people
//! or AIs are inserted as data and never rendered again.

use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

mod meter;

pub use meter::{MAX_JSON_INDENT, MAX_RENDER_WORK};

/// Most instructions one render may execute.
pub const FUEL: u64 = 100_000;
/// Largest rendered string, in bytes.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;
/// Largest value a template that is one expression may produce, in bytes of
/// JSON: it passes data on (`{{ steps.fetch.output.items }}`) and is
/// recorded in one event, so it is bounded by the event limit.
pub const MAX_RENDERED_VALUE_BYTES: usize = 4 << 20;

/// A template failed to compile or render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}`: {message}")]
pub struct TemplateError {
    /// The template text.
    pub template: String,
    /// What went wrong.
    pub message: String,
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(32);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        meter::install(&mut env);
        env
    })
}

type Code<'a> = minijinja::machinery::Instructions<'a>;

self_cell::self_cell!(
    /// A compiled template or expression, metered ([`meter`]), owning its text.
    struct Program {
        owner: Box<str>,
        #[covariant]
        dependent: Code,
    }
);

impl Program {
    /// Compiles `src`, an expression (the inside of `{{ … }}`) or a whole
    /// template. Errors read as minijinja's own.
    fn compile(src: &str, expression: bool) -> Result<Program, minijinja::Error> {
        use minijinja::machinery::{CodeGenerator, parse, parse_expr};
        Program::try_new(src.into(), |src| {
            let code = if expression {
                let ast = parse_expr(src)?;
                let mut g = CodeGenerator::new("<expression>", src);
                g.compile_expr(&ast);
                g.finish().0
            } else {
                let ast = parse(src, "<string>", Default::default())?;
                let mut g = CodeGenerator::new("<string>", src);
                g.compile_stmt(&ast);
                let (code, blocks) = g.finish();
                if !blocks.is_empty() {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::SyntaxError,
                        "`{% block %}` has no use in a workflow template",
                    ));
                }
                code
            };
            meter::rewrite(&code).map_err(|m| minijinja::Error::new(minijinja::ErrorKind::SyntaxError, m))
        })
    }

    /// Runs the program on `ctx` with at most `output` bytes of text out; an
    /// expression's value, or a template's text.
    fn run(&self, ctx: minijinja::Value, output: usize) -> Result<Ran, (minijinja::Error, Option<meter::Limit>)> {
        let meter = meter::Meter::start(output);
        let mut text = String::new();
        let ran = {
            let mut out = minijinja::machinery::make_string_output(&mut text);
            minijinja::machinery::eval(
                env(),
                self.borrow_dependent(),
                ctx,
                &Default::default(),
                &mut out,
                minijinja::AutoEscape::None,
            )
            .map(|(v, _)| v)
        };
        match ran {
            Ok(value) => Ok(Ran { value, text }),
            Err(e) => Err((e, meter.stopped())),
        }
    }
}

/// What a [`Program`] produced.
struct Ran {
    value: Option<minijinja::Value>,
    text: String,
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression of a string that is exactly `{{ expr }}`.
fn sole_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner.trim())
}

/// The names a template may read: `inputs`, `steps`, `secrets`, and
/// `item` and `index` inside a `map`.
pub const ROOTS: [&str; 6] = ["inputs", "steps", "secrets", "item", "index", "run"];

/// Checks that every template string in `value` compiles, reads only
/// [`ROOTS`] (and its own loop variables), and uses only filters, tests and
/// functions that exist at run time: what validates, runs.
pub fn check(value: &Value) -> Result<(), TemplateError> {
    check_with(value, &[])
}

/// [`check`], with more roots than [`ROOTS`] (an AI prompt also reads `vars`).
pub fn check_with(value: &Value, extra_roots: &[&str]) -> Result<(), TemplateError> {
    walk_strings(value, &mut |s| {
        if !is_template(s) {
            return Ok(());
        }
        let err = |message: String| TemplateError { template: s.to_owned(), message };
        let vars = match sole_expression(s) {
            Some(expr) => env().compile_expression(expr).map(|e| e.undeclared_variables(false)),
            None => env().template_from_str(s).map(|t| t.undeclared_variables(false)),
        }
        .map_err(|e| err(e.to_string()))?;
        match sole_expression(s) {
            Some(expr) => program(expr, true),
            None => program(s, false),
        }
        .map_err(|e| err(e.to_string()))?;
        let used = names_used(s);
        for (kind, name) in &used {
            let (kind, name) = (*kind, name.as_str());
            if !exists(kind, name) {
                return Err(err(format!(
                    "unknown {} `{name}`; see docs/workflow-language.md for the {}s a template can use",
                    kind.word(),
                    kind.word()
                )));
            }
        }
        let called = |v: &str| used.iter().any(|(k, n)| *k == Callable::Function && n == v);
        let mut vars: Vec<String> = vars
            .into_iter()
            .filter(|v| !ROOTS.contains(&v.as_str()) && !extra_roots.contains(&v.as_str()) && !called(v))
            .collect();
        vars.sort();
        if let Some(v) = vars.first() {
            return Err(err(format!(
                "`{v}` is not defined in a template; a template reads {}{}",
                "`inputs`, `steps`, `secrets`, `run`, and `item` and `index` inside a map",
                if extra_roots.is_empty() {
                    String::new()
                } else {
                    format!(" (here also `{}`)", extra_roots.join("`, `"))
                }
            )));
        }
        Ok(())
    })
}

/// What a name in a template is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callable {
    /// `x | name`.
    Filter,
    /// `x is name`.
    Test,
    /// `name(...)`.
    Function,
}

impl Callable {
    fn word(self) -> &'static str {
        match self {
            Callable::Filter => "filter",
            Callable::Test => "test",
            Callable::Function => "function",
        }
    }
}

/// Whether the template engine knows this filter, test or function: it is
/// asked, so the check cannot drift from what runs.
pub fn exists(kind: Callable, name: &str) -> bool {
    let probe = match kind {
        Callable::Filter => format!("none | {name}"),
        Callable::Test => format!("none is {name}"),
        Callable::Function => format!("{name}()"),
    };
    let Ok(e) = env().compile_expression(&probe) else { return false };
    match e.eval(minijinja::context! {}) {
        Ok(_) => true,
        Err(e) => {
            use minijinja::ErrorKind as K;
            let unknown = matches!(e.kind(), K::UnknownFilter | K::UnknownTest | K::UnknownFunction)
                || (kind == Callable::Function && e.kind() == K::UndefinedError);
            !unknown
        }
    }
}

const KEYWORDS: [&str; 16] = [
    "if", "elif", "else", "for", "in", "not", "and", "or", "is", "set", "with", "filter", "call", "true", "false",
    "none",
];

/// The filters, tests and functions a template's code uses (string
/// literals skipped).
pub fn names_used(src: &str) -> Vec<(Callable, String)> {
    let mut code = String::new();
    let mut rest = src;
    if sole_expression(src).is_some() || !is_template(src) {
        code.push_str(sole_expression(src).unwrap_or(""));
    } else {
        while let Some(i) = rest.find(['{']) {
            let after = &rest[i..];
            let close = if after.starts_with("{{") {
                "}}"
            } else if after.starts_with("{%") {
                "%}"
            } else {
                rest = &rest[i + 1..];
                continue;
            };
            // The close after the opening (`{%}` opens and does not close).
            let Some(end) = after[2..].find(close).map(|e| e + 2) else { break };
            code.push_str(&after[2..end]);
            code.push(' ');
            rest = &after[end + 2..];
        }
    }
    // Blank out string literals.
    let mut plain = String::with_capacity(code.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in code.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                plain.push(' ');
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                plain.push(' ');
            }
            None => plain.push(c),
        }
    }
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = Vec::new();
    let b = plain.as_bytes();
    for (i, c) in plain.char_indices() {
        if c == '|' {
            let name = ident(plain[i + 1..].trim_start());
            if !name.is_empty() {
                out.push((Callable::Filter, name));
            }
        }
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.');
        if !word_start || !(c.is_ascii_alphabetic() || c == '_') {
            continue;
        }
        let word = ident(&plain[i..]);
        let after = plain[i + word.len()..].trim_start();
        if word == "is" {
            let next = after.strip_prefix("not ").map_or(after, str::trim_start);
            let name = ident(next);
            if !name.is_empty() && name != "not" {
                out.push((Callable::Test, name));
            }
        } else if after.starts_with('(')
            && !KEYWORDS.contains(&word.as_str())
            && !plain[..i].trim_end().ends_with('|')
            && !plain[..i].trim_end().ends_with(" is")
            && !plain[..i].trim_end().ends_with(" not")
        {
            out.push((Callable::Function, word));
        }
    }
    out
}

/// Renders every template string in `value` against `ctx`.
pub fn render(value: &Value, ctx: &Scope) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) if is_template(s) => render_str(s, ctx)?,
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, ctx)?))).collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

/// Most compiled programs kept per thread; the cache starts over beyond it.
const PROGRAM_CACHE: usize = 4096;

/// Most bytes of compiled programs (by [`Program::weight`]) kept per thread.
/// The count alone let 4,096 programs stay on every thread that renders,
/// each holding at least [`PROGRAM_BASE`]: the `template` fuzz target grew
/// past 2 GiB of RSS in 20 s (the cache refilled between short-lived large
/// renders, and the heap fragmented around it; 343 MB without the cache).
const PROGRAM_CACHE_BYTES: usize = 8 << 20;

/// What even the smallest compiled program holds, measured (a counting
/// allocator, 2026-12-07): minijinja reserves room for 128 instructions
/// with their line and span records, twice (compiled, then metered).
const PROGRAM_BASE: usize = 12 << 10;

impl Program {
    /// About how many bytes the program holds: its text and its code.
    fn weight(&self) -> usize {
        // Counted once, when compiled (compiling was linear in them too).
        let code = self.borrow_dependent();
        let count = (0..).take_while(|&i| code.get(i).is_some()).count();
        // An instruction, and its line and span records.
        let each = std::mem::size_of::<minijinja::machinery::Instruction<'static>>() + 32;
        PROGRAM_BASE + self.borrow_owner().len() + count * each
    }
}

/// The compiled programs of one thread, bounded in count and in bytes.
#[derive(Default)]
struct Cache {
    programs: std::collections::HashMap<(bool, String), std::rc::Rc<Program>>,
    bytes: usize,
}

thread_local! {
    static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache::default());
}

/// The compiled program of `src`, compiled once per thread.
fn program(src: &str, expression: bool) -> Result<std::rc::Rc<Program>, minijinja::Error> {
    let key = (expression, src.to_owned());
    if let Some(p) = CACHE.with(|c| c.borrow().programs.get(&key).cloned()) {
        return Ok(p);
    }
    let p = std::rc::Rc::new(Program::compile(src, expression)?);
    let weight = p.weight() + key.1.len();
    // One program over a quarter of the budget is used once and not kept.
    if weight <= PROGRAM_CACHE_BYTES / 4 {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.programs.len() >= PROGRAM_CACHE || c.bytes + weight > PROGRAM_CACHE_BYTES {
                c.programs.clear();
                c.bytes = 0;
            }
            c.programs.insert(key, p.clone());
            c.bytes += weight;
        });
    }
    Ok(p)
}

/// How many compiled programs this thread keeps, and their bytes.
#[cfg(test)]
fn cached() -> (usize, usize) {
    CACHE.with(|c| (c.borrow().programs.len(), c.borrow().bytes))
}

fn render_str(s: &str, ctx: &Scope) -> Result<Value, TemplateError> {
    let err = |e: minijinja::Error| TemplateError { template: s.to_owned(), message: e.to_string() };
    let ctx = ctx.to_template();
    let too_big = |limit: usize| TemplateError {
        template: s.to_owned(),
        message: format!("rendered more than the limit of {limit} bytes"),
    };
    let failed = |(e, limit): (minijinja::Error, Option<meter::Limit>)| match limit {
        Some(meter::Limit::Output) => too_big(MAX_RENDERED_BYTES),
        _ => err(e),
    };
    if let Some(expr) = sole_expression(s) {
        let ran = program(expr, true).map_err(err)?.run(ctx, 0).map_err(failed)?;
        let v = ran.value.unwrap_or_default();
        // Measured before it is turned into JSON: a value can repeat one
        // string many times cheaply (`[s] * n`) and only grow when copied.
        let mut budget = MAX_RENDERED_VALUE_BYTES;
        if !fits(&v, &mut budget, 0) {
            return Err(too_big(MAX_RENDERED_VALUE_BYTES));
        }
        return serde_json::to_value(&v)
            .map_err(|e| TemplateError { template: s.to_owned(), message: format!("result is not JSON: {e}") });
    }
    let out = program(s, false).map_err(err)?.run(ctx, MAX_RENDERED_BYTES).map_err(failed)?.text;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(TemplateError {
            template: s.to_owned(),
            message: format!("rendered {} bytes, more than the limit of {MAX_RENDERED_BYTES}", out.len()),
        });
    }
    Ok(Value::String(out))
}

/// What a template or condition reads: named roots (`inputs`, `steps`,
/// `item`, …) sharing the run's values rather than copying them. Templates
/// see them through [`Json`], which converts only the parts an expression
/// reads, so a render inside a map iteration costs the same whatever the
/// size of the run's inputs, outputs or number of iterations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    roots: std::collections::BTreeMap<String, Root>,
}

/// One root of a [`Scope`].
#[derive(Debug, Clone, PartialEq)]
enum Root {
    Value(Arc<Value>),
    /// Step outputs and caught errors by step id, read as
    /// `{ id: { output: …, error: … } }`.
    Outputs(Arc<Vec<(String, Arc<Value>)>>, Arc<Vec<(String, Arc<Value>)>>),
}

impl Root {
    fn to_json(&self) -> Value {
        match self {
            Root::Value(v) => (**v).clone(),
            Root::Outputs(o, e) => {
                let mut m = serde_json::Map::new();
                for (k, v) in o.iter() {
                    m.insert(k.clone(), serde_json::json!({ "output": **v }));
                }
                for (k, v) in e.iter() {
                    let entry = m.entry(k.clone()).or_insert_with(|| serde_json::json!({}));
                    if let Value::Object(x) = entry {
                        x.insert("error".into(), (**v).clone());
                    }
                }
                Value::Object(m)
            }
        }
    }
}

impl Scope {
    /// An empty scope.
    pub fn new() -> Scope {
        Scope::default()
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: &str, value: Value) {
        self.roots.insert(name.to_owned(), Root::Value(Arc::new(value)));
    }

    /// Sets `name` to a value shared with its owner (no copy).
    pub fn share(&mut self, name: &str, value: Arc<Value>) {
        self.roots.insert(name.to_owned(), Root::Value(value));
    }

    /// Sets `name` to step outputs by step id, read as `{ id: { output } }`.
    pub fn outputs(&mut self, name: &str, outputs: Vec<(String, Arc<Value>)>) {
        self.roots.insert(name.to_owned(), Root::Outputs(Arc::new(outputs), Arc::default()));
    }

    /// Sets `name` to step outputs and the errors of failed steps whose
    /// `catch` handled them, by step id, read as `{ id: { output, error } }`.
    pub fn steps(&mut self, name: &str, outputs: Vec<(String, Arc<Value>)>, errors: Vec<(String, Arc<Value>)>) {
        self.roots.insert(name.to_owned(), Root::Outputs(Arc::new(outputs), Arc::new(errors)));
    }

    /// Whether `name` is set.
    pub fn has(&self, name: &str) -> bool {
        self.roots.contains_key(name)
    }

    /// The names set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    /// The value of `name` as JSON (a copy).
    pub fn json(&self, name: &str) -> Option<Value> {
        self.roots.get(name).map(Root::to_json)
    }

    /// The whole scope as one JSON object (a copy).
    pub fn to_json(&self) -> Value {
        Value::Object(self.roots.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
    }

    fn to_template(&self) -> minijinja::Value {
        minijinja::Value::from_object(Roots(self.roots.clone()))
    }
}

/// A JSON object's members become the roots.
impl From<Value> for Scope {
    fn from(v: Value) -> Scope {
        let roots = match v {
            Value::Object(m) => m.into_iter().map(|(k, v)| (k, Root::Value(Arc::new(v)))).collect(),
            _ => Default::default(),
        };
        Scope { roots }
    }
}

fn names(keys: impl Iterator<Item = impl AsRef<str>>) -> minijinja::value::Enumerator {
    minijinja::value::Enumerator::Values(keys.map(|k| minijinja::Value::from(k.as_ref())).collect())
}

/// The roots of a [`Scope`] as a template sees them.
#[derive(Debug)]
struct Roots(std::collections::BTreeMap<String, Root>);

impl minijinja::value::Object for Roots {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        Some(match self.0.get(key.as_str()?)? {
            Root::Value(v) => Json::lift(v, Vec::new(), v),
            Root::Outputs(o, e) => minijinja::Value::from_object(Outputs(o.clone(), e.clone())),
        })
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        names(self.0.keys())
    }
}

/// `steps`: `{ id: { output, error } }` over shared outputs and caught errors.
#[derive(Debug)]
struct Outputs(Arc<Vec<(String, Arc<Value>)>>, Arc<Vec<(String, Arc<Value>)>>);

impl minijinja::value::Object for Outputs {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let key = key.as_str()?;
        // The innermost scope's step comes last and wins.
        let output = self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let error = self.1.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        (output.is_some() || error.is_some()).then(|| minijinja::Value::from_object(Output { output, error }))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let mut keys: Vec<&String> = self.0.iter().chain(self.1.iter()).map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        names(keys.into_iter())
    }
}

/// `{ output, error }` of one step: what it returned, and the error its
/// `catch` handled (each only when there is one).
#[derive(Debug)]
struct Output {
    output: Option<Arc<Value>>,
    error: Option<Arc<Value>>,
}

impl minijinja::value::Object for Output {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let v = match key.as_str()? {
            "output" => self.output.as_ref()?,
            "error" => self.error.as_ref()?,
            _ => return None,
        };
        Some(Json::lift(v, Vec::new(), v))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let mut n = Vec::new();
        if self.output.is_some() {
            n.push("output");
        }
        if self.error.is_some() {
            n.push("error");
        }
        names(n.into_iter())
    }
}

/// A step along a path into a JSON value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A JSON array or object inside a shared root, converted for a template
/// one member at a time as it is read.
#[derive(Debug)]
struct Json {
    root: Arc<Value>,
    path: Vec<Seg>,
}

impl Json {
    fn lift(root: &Arc<Value>, path: Vec<Seg>, v: &Value) -> minijinja::Value {
        match v {
            Value::Array(_) | Value::Object(_) => minijinja::Value::from_object(Json { root: root.clone(), path }),
            Value::String(text) => {
                // A copy: charged, so reading a large input many times is bounded.
                if meter::charge(text.len()).is_err() {
                    return minijinja::Value::from(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("the template reads more than {MAX_RENDER_WORK} bytes of the run's data"),
                    ));
                }
                minijinja::Value::from(text.as_str())
            }
            scalar => minijinja::Value::from(minijinja::value::Serde(scalar)),
        }
    }

    fn here(&self) -> &Value {
        let mut v = &*self.root;
        for s in &self.path {
            v = match (s, v) {
                (Seg::Key(k), Value::Object(m)) => &m[k.as_str()],
                (Seg::Index(i), Value::Array(a)) => &a[*i],
                _ => unreachable!("a path is only built from members that exist"),
            };
        }
        v
    }

    fn child(&self, seg: Seg, v: &Value) -> minijinja::Value {
        let mut path = self.path.clone();
        path.push(seg);
        Json::lift(&self.root, path, v)
    }
}

impl minijinja::value::Object for Json {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        match self.here() {
            Value::Array(_) => minijinja::value::ObjectRepr::Seq,
            _ => minijinja::value::ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match self.here() {
            Value::Object(m) => {
                let k = key.as_str()?;
                let (k, v) = m.get_key_value(k)?;
                Some(self.child(Seg::Key(k.clone()), v))
            }
            Value::Array(a) => {
                let i = usize::try_from(key.as_i64()?).ok()?;
                Some(self.child(Seg::Index(i), a.get(i)?))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        match self.here() {
            Value::Array(a) => minijinja::value::Enumerator::Seq(a.len()),
            Value::Object(m) => names(m.keys()),
            _ => minijinja::value::Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.here() {
            Value::Array(a) => Some(a.len()),
            Value::Object(m) => Some(m.len()),
            _ => Some(0),
        }
    }
}

/// Calls `f` on every string inside `value` (keys excluded), depth first;
/// the first error stops the walk.
pub fn walk_strings<E>(value: &Value, f: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().try_for_each(|v| walk_strings(v, f)),
        Value::Object(map) => map.values().try_for_each(|v| walk_strings(v, f)),
        _ => Ok(()),
    }
}

/// Whether a rendered value, written out, stays within `budget` bytes
/// (counting down); stops as soon as it would not.
fn fits(v: &minijinja::Value, budget: &mut usize, depth: usize) -> bool {
    use minijinja::value::ValueKind;
    let take = |n: usize, budget: &mut usize| match budget.checked_sub(n) {
        Some(rest) => {
            *budget = rest;
            true
        }
        None => false,
    };
    if depth > 128 {
        return false;
    }
    match v.kind() {
        ValueKind::String => take(v.as_str().map_or(0, str::len) + 2, budget),
        ValueKind::Number => take(v.to_string().len(), budget),
        ValueKind::Seq | ValueKind::Iterable => {
            let Ok(items) = v.try_iter() else { return take(8, budget) };
            for item in items {
                if !take(1, budget) || !fits(&item, budget, depth + 1) {
                    return false;
                }
            }
            take(2, budget)
        }
        ValueKind::Map => {
            let Ok(keys) = v.try_iter() else { return take(8, budget) };
            for k in keys {
                let item = v.get_item(&k).unwrap_or_default();
                if !fits(&k, budget, depth + 1) || !take(2, budget) || !fits(&item, budget, depth + 1) {
                    return false;
                }
            }
            take(2, budget)
        }
        _ => take(5, budget),
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use serde_json::json;

    /// The reproducer of the `template` fuzz target running out of memory
    /// (RSS past 2 GiB from seeds in 20 s, no single allocation over
    /// 128 MB): the per-thread cache of compiled programs was bounded by
    /// count only, so 4,096 long templates kept all their code. Now it keeps
    /// at most `PROGRAM_CACHE_BYTES` on a thread, and renders the same.
    #[test]
    fn compiled_programs_kept_per_thread_stay_within_their_byte_budget() {
        let ctx = Scope::from(json!({ "inputs": { "x": 1 } }));
        let mut weights = 0;
        for i in 0..1024 {
            let src = format!("{{{{ inputs.x + {i} }}}}{}", "{{ inputs.x }}-".repeat(150));
            weights += Program::compile(&src, false).expect("compiles").weight();
            let out = render(&Value::String(src), &ctx).expect("renders");
            assert!(out.as_str().is_some_and(|s| s.starts_with(&format!("{}1-1-", 1 + i))), "{out}");
            let (count, bytes) = cached();
            assert!(bytes <= PROGRAM_CACHE_BYTES, "{count} programs keep {bytes} bytes");
        }
        assert!(weights > 4 * PROGRAM_CACHE_BYTES, "the templates rendered weigh {weights} bytes in all");
        // A program too heavy to keep still renders.
        let huge = "{{ inputs.x }}".repeat(20_000);
        let before = cached();
        assert_eq!(render(&Value::String(huge), &ctx).expect("renders").as_str().map(str::len), Some(20_000));
        assert_eq!(cached(), before, "not kept");
    }
}
