//! Conditions: a small, safe, non-Turing-complete expression language (CEL:
//! comparisons, `&&`, `||`, `!`, `in`, `size`, `all`/`exists`, member and
//! index access) over `inputs` and `steps`. Never `eval`.

use serde_json::Value;

/// Longest accepted condition, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of brackets.
pub const MAX_NESTING: usize = 32;

/// A compiled condition.
#[derive(Debug)]
pub struct Condition {
    source: String,
    program: cel::Program,
}

impl Clone for Condition {
    fn clone(&self) -> Self {
        // Compiling succeeded once; the source has not changed.
        Condition::compile(&self.source).unwrap_or_else(|_| unreachable!("recompiling a compiled condition"))
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Condition {
    /// Compiles `source`, refusing over-long or over-nested input before the
    /// parser sees it.
    pub fn compile(source: &str) -> Result<Condition, String> {
        if source.len() > MAX_LEN {
            return Err(format!("condition is {} bytes; the limit is {MAX_LEN}", source.len()));
        }
        let mut depth = 0usize;
        for c in source.chars() {
            match c {
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!("condition nests deeper than {MAX_NESTING} levels"));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let program = cel::Program::compile(source).map_err(|e| e.to_string())?;
        Ok(Condition { source: source.to_owned(), program })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a JSON value.
    pub fn value(&self, ctx: &Value) -> Result<Value, String> {
        let mut context = cel::Context::default();
        if let Value::Object(vars) = ctx {
            for (k, v) in vars {
                context.add_variable_from_value(k.clone(), to_cel(v));
            }
        }
        let v = self.program.execute(&context).map_err(|e| match &e {
            cel::ExecutionError::UnsupportedBinaryOperator(op, l, r) if is_number(l) && is_number(r) => format!(
                "`{}`: cannot {op} {l:?} and {r:?}: a whole number and a decimal do not mix in a condition; \
                 write the whole number as a decimal (`2.0`) or convert it with `double(...)`",
                self.source
            ),
            _ => format!("`{}`: {e}", self.source),
        })?;
        v.json().map_err(|e| format!("`{}`: result is not JSON: {e:?}", self.source))
    }

    /// Evaluates to a boolean; any other result is an error.
    pub fn holds(&self, ctx: &Value) -> Result<bool, String> {
        match self.value(ctx)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("`{}` evaluated to {other}, not true or false", self.source)),
        }
    }
}

/// JSON as CEL values. Whole numbers become `int` (CEL's `uint` only past
/// `i64::MAX`), so numbers from inputs and step outputs mix with literals
/// (`inputs.x * 2`, `steps.c.output.n + 1 > 3`); other numbers `double`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(std::sync::Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let m: std::collections::HashMap<String, cel::Value> =
                o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::Map(m.into())
        }
    }
}

fn is_number(v: &cel::Value) -> bool {
    matches!(v, cel::Value::Int(_) | cel::Value::UInt(_) | cel::Value::Float(_))
}
