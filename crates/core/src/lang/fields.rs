//! Every unknown field of a workflow file at once. serde stops at the first
//! field a struct does not know; this pass walks the whole YAML tree beside
//! the language's JSON Schema (the same one `cairn schema` prints), names
//! each unknown field where it is written with the fields that place takes,
//! and blanks what it can so compiling goes on to find every other problem.

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostic, did_you_mean};

/// A YAML node with the location of every mapping key.
enum Node {
    Map(Vec<(Spanned<String>, Node)>),
    Seq(Vec<Node>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = a.next_element::<Node>()? {
                    out.push(n);
                }
                Ok(Node::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = a.next_key::<Spanned<String>>()? {
                    out.push((k, a.next_value::<Node>()?));
                }
                Ok(Node::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// An unknown field: where, its name, and what that place takes.
pub(super) struct Unknown {
    key: Spanned<String>,
    known: Vec<String>,
}

/// Every unknown field in `source`, in file order; empty when the file
/// does not parse as YAML at all (serde's own error says why).
pub(super) fn unknown_fields(source: &str) -> Vec<Unknown> {
    let Ok(node) = serde_saphyr::from_str::<Node>(source) else { return Vec::new() };
    let schema = serde_json::to_value(super::schema()).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk(&node, &schema, &schema, &mut out);
    out.sort_by_key(|u| (u.key.referenced.line(), u.key.referenced.column()));
    out
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/")) {
        Some(path) => path.split('/').fold(root, |v, p| v.get(p).unwrap_or(&Value::Null)),
        None => s,
    }
}

/// The alternative of `s` that describes a node of this shape, looking
/// through nested alternatives (an optional field whose type is itself a
/// choice, such as `retry`: a policy or a list of them).
fn pick<'a>(root: &'a Value, s: &'a Value, map: bool) -> &'a Value {
    let s = resolve(root, s);
    let alts = s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array);
    let Some(alts) = alts else { return s };
    let wanted = if map { "properties" } else { "items" };
    alts.iter().map(|a| pick(root, a, map)).find(|a| a.get(wanted).is_some()).unwrap_or(s)
}

fn walk(node: &Node, s: &Value, root: &Value, out: &mut Vec<Unknown>) {
    match node {
        Node::Map(entries) => {
            let s = pick(root, s, true);
            let Some(props) = s.get("properties").and_then(Value::as_object) else { return };
            let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
            for (k, v) in entries {
                match props.get(&k.value) {
                    Some(child) => walk(v, child, root, out),
                    None if closed => out.push(Unknown { key: k.clone(), known: props.keys().cloned().collect() }),
                    None => {}
                }
            }
        }
        Node::Seq(items) => {
            let s = pick(root, s, false);
            if let Some(item) = s.get("items") {
                for n in items {
                    walk(n, item, root, out);
                }
            }
        }
        Node::Scalar => {}
    }
}

impl Unknown {
    /// The diagnostic.
    pub(super) fn diagnostic(&self, file: &str) -> Diagnostic {
        let name = &self.key.value;
        let suggestion = did_you_mean(name, self.known.iter().map(String::as_str));
        let help = match suggestion {
            Some(s) => format!("did you mean `{s}`? this place takes: {}", self.known.join(", ")),
            None => format!("this place takes: {}", self.known.join(", ")),
        };
        Diagnostic {
            code: "unknown-field",
            file: file.to_owned(),
            line: self.key.referenced.line(),
            column: self.key.referenced.column(),
            message: format!("unknown field `{name}`"),
            help: Some(help),
        }
    }
}

/// `source` with the unknown fields and their values blanked (lines kept,
/// so every other location stays right), when each is written in block
/// style on a line of its own; `None` otherwise.
pub(super) fn without(source: &str, unknown: &[Unknown]) -> Option<String> {
    let mut lines: Vec<String> = source.lines().map(str::to_owned).collect();
    for u in unknown {
        let line = usize::try_from(u.key.referenced.line()).ok()?.checked_sub(1)?;
        let col = usize::try_from(u.key.referenced.column()).ok()?.checked_sub(1)?;
        let text = lines.get(line)?;
        let (before, at) = (text.get(..col)?, text.get(col..)?);
        if !before.trim().is_empty() || !at.starts_with(u.key.value.as_str()) {
            return None;
        }
        lines[line] = String::new();
        // The value's block: the following lines indented deeper than the key.
        for l in lines.iter_mut().skip(line + 1) {
            let indent = l.len() - l.trim_start().len();
            if l.trim().is_empty() || indent > col {
                *l = String::new();
            } else {
                break;
            }
        }
    }
    Some(lines.join("\n"))
}
