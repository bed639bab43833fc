//! What compiling a workflow file carries along: the diagnostics found so
//! far, the ids and task names known, and the small checks every part of
//! the compiler shares. Its own file so the compiler's parts depend on it
//! and not on each other.

use serde_saphyr::Spanned;

use super::diagnostic::Diagnostic;
use crate::model::parse_duration;

/// The compiler's state.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) diags: Vec<Diagnostic>,
    /// Every step id in the file, nested ones included.
    pub(super) all_ids: Vec<&'a str>,
    pub(super) tasks: &'a [&'a str],
    pub(super) children: Vec<String>,
    /// Every model an AI step names.
    pub(super) models: Vec<crate::model::ModelRef>,
    /// The most items any list in the inputs may have, when the inputs'
    /// schema bounds every array with `maxItems`.
    pub(super) max_input_items: Option<u64>,
}

impl Ctx<'_> {
    /// A duration, or a diagnostic at its span.
    pub(super) fn duration(&mut self, span: &Spanned<String>) -> Option<std::time::Duration> {
        duration(self, span)
    }

    /// Records a diagnostic at a span.
    pub(super) fn at<T>(&mut self, span: &Spanned<T>, code: &'static str, message: String, help: Option<String>) {
        self.diags.push(Diagnostic {
            code,
            file: self.file.to_owned(),
            line: span.referenced.line(),
            column: span.referenced.column(),
            message,
            help,
        });
    }
}

/// A step id: letters, digits and `_`, so templates and conditions can
/// refer to it as `steps.ID` (a `-` would read as a minus sign).
pub(super) fn valid_step_id(s: &str) -> bool {
    valid_ident(s) && !s.contains('-')
}

pub(super) fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// A duration, or a diagnostic at its span.
pub(super) fn duration(cx: &mut Ctx<'_>, span: &Spanned<String>) -> Option<std::time::Duration> {
    match parse_duration(&span.value) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.at(span, "bad-duration", e, None);
            None
        }
    }
}

/// Reserved target name that ends the run (or the sequence it is in).
pub const END: &str = "end";

/// Checks a container's `max_concurrency`: at least 1.
pub(super) fn concurrency(cx: &mut Ctx<'_>, s: &super::raw::RawStep, max: Option<u32>) {
    if max == Some(0) {
        cx.at(
            &s.id,
            "bad-concurrency",
            format!("step `{}`: `max_concurrency` must be at least 1", s.id.value),
            Some("omit it to run everything at once".into()),
        );
    }
}
