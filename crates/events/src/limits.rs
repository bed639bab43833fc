//! One set of limits on what is written, checked before an append: how
//! deeply a value nests, how large one string and one event may be. The
//! engine checks the values people and services hand it (inputs, outputs,
//! answers) against them and refuses or fails the step with a clear error;
//! the store refuses any payload past them as the last line of defence, so
//! nothing it writes is beyond what its readers accept.
//!
//! Architecture invariant: every reader accepts everything the writer
//! accepts. JSON readers (serde_json) stop at 128 levels; the writer stops
//! values at [`Limits::max_depth`] (64) and payloads, which wrap values in a
//! few levels of their own, at `max_depth + PAYLOAD_WRAPPING`.

use serde_json::Value;

/// Levels a payload may add around the values it carries (`{"input": …}`,
/// `{"values": …}`, an export record around a payload).
pub const PAYLOAD_WRAPPING: usize = 8;

/// The deepest nesting any reader of the log accepts (serde_json's limit).
pub const READER_MAX_DEPTH: usize = 128;

/// The limits; [`Limits::default`] is what Cairn enforces unless configured.
/// The defaults are also the ceilings: what the store enforces and every
/// reader accepts, so a configuration may only lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Limits {
    /// Deepest nesting of arrays and objects in a value.
    pub max_depth: usize,
    /// Largest string in a value, in bytes.
    pub max_string_bytes: usize,
    /// Largest event payload, in bytes of JSON.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64, max_string_bytes: 1 << 20, max_event_bytes: 4 << 20 }
    }
}

/// A value or payload past a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at `{path}` {detail}; the limit is {max} ({limit}); {fix}")]
pub struct LimitError {
    /// Which limit: `max_depth`, `max_string_bytes` or `max_event_bytes`.
    pub limit: &'static str,
    /// Where: a JSON pointer (`/inputs/a/0`), or `/` for a whole payload.
    pub path: String,
    /// What was measured.
    pub actual: usize,
    /// The limit.
    pub max: usize,
    what: &'static str,
    detail: String,
    fix: &'static str,
}

impl LimitError {
    fn depth(path: String, actual: usize, max: usize) -> Self {
        LimitError {
            limit: "max_depth",
            path,
            actual,
            max,
            what: "the value",
            detail: format!("nests {actual} levels deep"),
            fix: "flatten the data, or pass a reference (a URL, an id) instead of the document",
        }
    }

    fn string(path: String, actual: usize, max: usize) -> Self {
        LimitError {
            limit: "max_string_bytes",
            path,
            actual,
            max,
            what: "a string",
            detail: format!("is {actual} bytes"),
            fix: "store large text elsewhere and pass a reference",
        }
    }

    fn event(actual: usize, max: usize) -> Self {
        LimitError {
            limit: "max_event_bytes",
            path: "/".into(),
            actual,
            max,
            what: "the event",
            detail: format!("is {actual} bytes"),
            fix: "store large data elsewhere and pass a reference",
        }
    }
}

impl Limits {
    /// Limits lowered from the defaults by `lower` (each `None` keeps the
    /// default); an error names a value above its ceiling (the default:
    /// what the store enforces and every reader accepts) or below a floor
    /// that would refuse ordinary data.
    pub fn lowered(
        max_depth: Option<usize>,
        max_string_bytes: Option<usize>,
        max_event_bytes: Option<usize>,
    ) -> Result<Limits, String> {
        let ceiling = Limits::default();
        let pick = |name: &str, v: Option<usize>, ceiling: usize, floor: usize| match v {
            None => Ok(ceiling),
            Some(v) if v > ceiling => Err(format!(
                "limits.{name} {v} is above {ceiling}, the most the store takes and every reader accepts; only lower values may be set"
            )),
            Some(v) if v < floor => {
                Err(format!("limits.{name} {v} is below {floor}, which would refuse ordinary data"))
            }
            Some(v) => Ok(v),
        };
        let l = Limits {
            max_depth: pick("max_depth", max_depth, ceiling.max_depth, 4)?,
            max_string_bytes: pick("max_string_bytes", max_string_bytes, ceiling.max_string_bytes, 1024)?,
            max_event_bytes: pick("max_event_bytes", max_event_bytes, ceiling.max_event_bytes, 64 * 1024)?,
        };
        if l.max_string_bytes > l.max_event_bytes {
            return Err(format!(
                "limits.max_string_bytes {} is above limits.max_event_bytes {}: a string must fit in an event",
                l.max_string_bytes, l.max_event_bytes
            ));
        }
        Ok(l)
    }

    /// Checks a value (nesting and strings), naming the first place past a
    /// limit with a JSON pointer under `at` (e.g. `/inputs`).
    pub fn check_value(&self, at: &str, v: &Value) -> Result<(), LimitError> {
        let mut path = at.to_owned();
        self.walk(v, 0, &mut path)
    }

    fn walk(&self, v: &Value, depth: usize, path: &mut String) -> Result<(), LimitError> {
        match v {
            Value::String(s) if s.len() > self.max_string_bytes => {
                Err(LimitError::string(path.clone(), s.len(), self.max_string_bytes))
            }
            Value::Array(items) => {
                let depth = depth + 1;
                if depth > self.max_depth {
                    return Err(LimitError::depth(path.clone(), depth, self.max_depth));
                }
                for (i, x) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    self.walk(x, depth, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(m) => {
                let depth = depth + 1;
                if depth > self.max_depth {
                    return Err(LimitError::depth(path.clone(), depth, self.max_depth));
                }
                for (k, x) in m {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    self.walk(x, depth, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks a payload's JSON text without parsing it: its size, its
    /// nesting (at most `max_depth + PAYLOAD_WRAPPING`) and its strings.
    pub fn check_payload(&self, json: &str) -> Result<(), LimitError> {
        if json.len() > self.max_event_bytes {
            return Err(LimitError::event(json.len(), self.max_event_bytes));
        }
        let max_depth = self.max_depth + PAYLOAD_WRAPPING;
        let (mut depth, mut in_string, mut escaped, mut string_start) = (0usize, false, false, 0usize);
        for (i, b) in json.bytes().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                    // Escapes make the text longer than the string: a bound.
                    if i - string_start > self.max_string_bytes.saturating_mul(6) {
                        return Err(LimitError::string("/".into(), i - string_start, self.max_string_bytes));
                    }
                }
                continue;
            }
            match b {
                b'"' => {
                    in_string = true;
                    string_start = i + 1;
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(LimitError::depth("/".into(), depth, max_depth));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(Value::from(1), |v, _| serde_json::json!({ "a": v }))
    }

    #[test]
    fn depth_is_counted_and_named_by_path() {
        let l = Limits::default();
        assert!(l.check_value("/inputs", &nested(64)).is_ok());
        let e = l.check_value("/inputs", &nested(65)).unwrap_err();
        assert_eq!((e.limit, e.actual, e.max), ("max_depth", 65, 64));
        assert!(e.path.starts_with("/inputs/a/a/"), "{}", e.path);
        assert!(e.to_string().contains("nests 65 levels deep; the limit is 64"), "{e}");
    }

    #[test]
    fn payloads_are_checked_as_text() {
        let l = Limits::default();
        let ok = serde_json::to_string(&serde_json::json!({ "input": nested(64) })).unwrap();
        assert!(l.check_payload(&ok).is_ok());
        let deep = serde_json::to_string(&nested(64 + PAYLOAD_WRAPPING + 1)).unwrap();
        assert_eq!(l.check_payload(&deep).unwrap_err().limit, "max_depth");
        // Brackets inside strings are text, not nesting.
        let text = serde_json::to_string(&serde_json::json!({ "s": "[[[[".repeat(100) })).unwrap();
        assert!(l.check_payload(&text).is_ok());
        let big = serde_json::to_string(&"x".repeat((4 << 20) + 1)).unwrap();
        assert_eq!(l.check_payload(&big).unwrap_err().limit, "max_event_bytes");
    }

    #[test]
    fn readers_accept_everything_the_writer_accepts() {
        // The deepest payload the writer lets through parses, with room for
        // an export record around it.
        let l = Limits::default();
        let deepest = serde_json::to_string(&nested(l.max_depth + PAYLOAD_WRAPPING)).unwrap();
        assert!(l.check_payload(&deepest).is_ok());
        let record = format!("{{\"record\":{{\"payload\":{deepest}}}}}");
        assert!(serde_json::from_str::<Value>(&record).is_ok());
        assert!(l.max_depth + PAYLOAD_WRAPPING + 2 < READER_MAX_DEPTH);
    }
}
