//! Templates: `{{ inputs.topic }}`, `{{ steps.draft.output.title }}` in any
//! string of a step's input or output. Rendered in a sandbox (minijinja with
//! fuel, a recursion limit and strict undefined values), never with I/O.
//!
//! A string that is exactly one `{{ expression }}` renders to the value
//! itself (a number stays a number, an object an object); any other string
//! with a template renders to a string. Values that came from inputs, people
//! or AIs are inserted as data and never rendered again.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Most instructions one render may execute.
pub const FUEL: u64 = 100_000;
/// Largest rendered string, in bytes.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

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
        env
    })
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
pub const ROOTS: [&str; 5] = ["inputs", "steps", "secrets", "item", "index"];

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
                "`inputs`, `steps`, `secrets`, and `item` and `index` inside a map",
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
            let Some(end) = after.find(close) else { break };
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
pub fn render(value: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) if is_template(s) => render_str(s, ctx)?,
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, ctx)?))).collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

/// Most compiled expressions kept per thread; the cache starts over beyond it.
const EXPRESSION_CACHE: usize = 4096;

/// Runs `f` on the compiled `expr`, compiling it once per thread.
fn with_expression<T>(
    expr: &str,
    f: impl FnOnce(&minijinja::Expression<'static, 'static>) -> Result<T, minijinja::Error>,
) -> Result<T, minijinja::Error> {
    type Cache = std::collections::HashMap<String, std::rc::Rc<minijinja::Expression<'static, 'static>>>;
    thread_local! {
        static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache::new());
    }
    let cached = CACHE.with(|c| c.borrow().get(expr).cloned());
    let compiled = match cached {
        Some(e) => e,
        None => {
            let e = std::rc::Rc::new(env().compile_expression_owned(expr.to_owned())?);
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= EXPRESSION_CACHE {
                    c.clear();
                }
                c.insert(expr.to_owned(), e.clone());
            });
            e
        }
    };
    f(&compiled)
}

fn render_str(s: &str, ctx: &Value) -> Result<Value, TemplateError> {
    let err = |e: minijinja::Error| TemplateError { template: s.to_owned(), message: e.to_string() };
    let ctx = minijinja::Value::from(minijinja::value::Serde(ctx));
    let too_big = || TemplateError {
        template: s.to_owned(),
        message: format!("rendered more than the limit of {MAX_RENDERED_BYTES} bytes"),
    };
    if let Some(expr) = sole_expression(s) {
        let v = with_expression(expr, |e| e.eval(&ctx)).map_err(err)?;
        // Measured before it is turned into JSON: a value can repeat one
        // string many times cheaply (`[s] * n`) and only grow when copied.
        let mut budget = MAX_RENDERED_BYTES;
        if !fits(&v, &mut budget, 0) {
            return Err(too_big());
        }
        return serde_json::to_value(&v)
            .map_err(|e| TemplateError { template: s.to_owned(), message: format!("result is not JSON: {e}") });
    }
    // Rendered into a bounded buffer: the output never grows past the limit.
    let t = env().template_from_str(s).map_err(err)?;
    let mut out = Bounded(Vec::new());
    if let Err(e) = t.render_captured_to(&ctx, &mut out) {
        return Err(if out.0.len() >= MAX_RENDERED_BYTES { too_big() } else { err(e) });
    }
    let out = String::from_utf8(out.0)
        .map_err(|_| TemplateError { template: s.to_owned(), message: "rendered text is not UTF-8".into() })?;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(TemplateError {
            template: s.to_owned(),
            message: format!("rendered {} bytes, more than the limit of {MAX_RENDERED_BYTES}", out.len()),
        });
    }
    Ok(Value::String(out))
}

pub(crate) fn walk_strings<E>(value: &Value, f: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().try_for_each(|v| walk_strings(v, f)),
        Value::Object(map) => map.values().try_for_each(|v| walk_strings(v, f)),
        _ => Ok(()),
    }
}

/// Output that refuses to grow past [`MAX_RENDERED_BYTES`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            self.0.resize(MAX_RENDERED_BYTES, b' ');
            return Err(std::io::Error::other("the rendered text is over its limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        _ => take(24, budget),
    }
}
