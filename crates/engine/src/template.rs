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

/// Checks that every template string in `value` compiles.
pub fn check(value: &Value) -> Result<(), TemplateError> {
    walk_strings(value, &mut |s| {
        if !is_template(s) {
            return Ok(());
        }
        let r = match sole_expression(s) {
            Some(expr) => env().compile_expression(expr).map(|_| ()),
            None => env().template_from_str(s).map(|_| ()),
        };
        r.map_err(|e| TemplateError { template: s.to_owned(), message: e.to_string() })
    })
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
    if let Some(expr) = sole_expression(s) {
        let v = with_expression(expr, |e| e.eval(&ctx)).map_err(err)?;
        return serde_json::to_value(&v)
            .map_err(|e| TemplateError { template: s.to_owned(), message: format!("result is not JSON: {e}") });
    }
    let out = env().render_str(s, &ctx).map_err(err)?;
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
