//! Conditions: a small, safe, non-Turing-complete expression language (CEL:
//! comparisons, `&&`, `||`, `!`, `in`, `size`, `all`/`exists`, member and
//! index access) over `inputs` and `steps`. Never `eval`.

use serde_json::Value;

use crate::template::Scope;

/// Longest accepted condition, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of brackets.
pub const MAX_NESTING: usize = 32;

/// Most list elements a condition may visit: the largest list in its
/// context raised to the depth of its nested comprehensions (`all`,
/// `exists`, `exists_one`, `map`, `filter`) must stay under it.
pub const MAX_COST: u64 = 1_000_000;

/// A compiled condition.
#[derive(Debug)]
pub struct Condition {
    source: String,
    program: cel::Program,
    /// How deeply its comprehensions nest.
    loops: u32,
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
        Ok(Condition { source: source.to_owned(), program, loops: comprehension_depth(source) })
    }

    /// The roots of `ctx` the condition reads, as JSON: only those are
    /// converted, so a condition over `item` costs nothing for large inputs.
    fn read<'a>(&'a self, ctx: &'a Scope) -> impl Iterator<Item = (&'a str, Value)> + 'a {
        let refs = self.program.references();
        let wanted: Vec<&'a str> = ctx.names().filter(|n| refs.has_variable(n)).collect();
        wanted.into_iter().filter_map(|n| Some((n, ctx.json(n)?)))
    }

    /// How deeply its comprehensions nest.
    pub fn loops(&self) -> u32 {
        self.loops
    }

    /// Whether it reads no root ([`crate::template::ROOTS`]) but `names`
    /// (the variables of its comprehensions are its own).
    pub fn reads_only(&self, names: &[&str]) -> bool {
        let refs = self.program.references();
        crate::template::ROOTS.iter().all(|r| names.contains(r) || !refs.has_variable(r))
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Refuses an evaluation that could visit more than [`MAX_COST`] list
    /// elements: the largest list in `ctx` to the power of the nesting of
    /// the condition's comprehensions (a bound decided before it runs, as
    /// CEL has no fuel). A step fails with kind `limit` on it.
    pub fn check_cost(&self, ctx: &Scope) -> Result<(), String> {
        if self.loops == 0 {
            return Ok(());
        }
        let n = self.read(ctx).map(|(_, v)| largest_list(&v)).max().unwrap_or(0) as u64;
        let cost = n.saturating_pow(self.loops);
        if cost > MAX_COST {
            return Err(format!(
                "`{}` nests {} comprehensions over lists of up to {n} items: up to {cost} evaluations, over the limit of {MAX_COST}; filter the data first (a `transform` or a task) or nest less",
                self.source, self.loops
            ));
        }
        Ok(())
    }

    /// Evaluates to a JSON value.
    pub fn value(&self, ctx: &Scope) -> Result<Value, String> {
        self.check_cost(ctx)?;
        let mut context = cel::Context::default();
        for (k, v) in self.read(ctx) {
            context.add_variable_from_value(k.to_owned(), to_cel(&v));
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
    pub fn holds(&self, ctx: &Scope) -> Result<bool, String> {
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

/// How deeply the comprehension macros of a condition nest.
fn comprehension_depth(src: &str) -> u32 {
    const MACROS: [&str; 5] = [".all(", ".exists(", ".exists_one(", ".map(", ".filter("];
    let b = src.as_bytes();
    let (mut i, mut parens, mut max) = (0usize, 0usize, 0usize);
    let mut open: Vec<usize> = Vec::new();
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' => quote = Some(c),
            b'.' => {
                if let Some(m) = MACROS.iter().find(|m| src.get(i..).is_some_and(|r| r.starts_with(**m))) {
                    parens += 1;
                    open.push(parens);
                    max = max.max(open.len());
                    i += m.len();
                    continue;
                }
            }
            b'(' => parens += 1,
            b')' => {
                if open.last() == Some(&parens) {
                    open.pop();
                }
                parens = parens.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    u32::try_from(max).unwrap_or(u32::MAX)
}

/// The length of the longest list anywhere in a value.
fn largest_list(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(largest_list).max().unwrap_or(0).max(a.len()),
        Value::Object(m) => m.values().map(largest_list).max().unwrap_or(0),
        _ => 0,
    }
}
