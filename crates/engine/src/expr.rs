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
                let v = cel::to_value(v).map_err(|e| format!("cannot expose `{k}` to the condition: {e}"))?;
                context.add_variable_from_value(k.clone(), v);
            }
        }
        let v = self.program.execute(&context).map_err(|e| format!("`{}`: {e}", self.source))?;
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
