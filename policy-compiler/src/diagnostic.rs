//! Diagnostics: what is wrong with the input, and exactly where.
//!
//! Every problem the compiler finds in its input becomes a [`Diagnostic`] naming the file,
//! line and column, the object (kind, namespace, name), the field path and the offending
//! value. The compiler never panics on input and never silently drops an invalid object.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::source::{Pos, SpanIndex};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The input is invalid: an API server would reject it, or it cannot be read.
    Error,
    /// The input is accepted but probably not what was meant.
    Warning,
}

/// Identifies a Kubernetes object in messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// `Pod`, `NetworkPolicy`, ...
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name` (may be empty when missing).
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, name)
        }
    }
}

/// Where an object came from: file, document and the span index of that document.
#[derive(Debug, Clone)]
pub struct Origin {
    /// File name as given by the caller (`-` for stdin).
    pub file: Arc<str>,
    /// 0-based document index within the file.
    pub document: usize,
    /// Field path prefix of the object within its document (`items[3]` inside a List).
    pub base: String,
    /// Positions of the document's fields.
    pub spans: Arc<SpanIndex>,
}

impl Origin {
    /// Position of a field path relative to the object (or its nearest located ancestor).
    pub fn locate(&self, field: &str) -> Option<Pos> {
        self.spans.locate(&self.full_path(field))
    }

    /// Whether the scalar at `field` (relative to the object) is quoted in the source.
    pub fn is_quoted(&self, field: &str) -> Option<bool> {
        self.spans.is_quoted(&self.full_path(field))
    }

    fn full_path(&self, field: &str) -> String {
        match (self.base.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.base.clone(),
            (false, false) if field.starts_with('[') => format!("{}{field}", self.base),
            (false, false) => format!("{}.{field}", self.base),
        }
    }
}

/// One problem found in the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Source file, when known.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// The object the problem is in, when known.
    pub object: Option<ObjectRef>,
    /// Field path within the object, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: Option<String>,
    /// The offending value, rendered as text.
    pub value: Option<String>,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl Diagnostic {
    /// An error about a whole file (unreadable, unparsable).
    pub fn file_error(file: &str, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: Some(file.to_string()),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            object: None,
            field: None,
            value: None,
            message: message.into(),
        }
    }

    /// An error in a field of an object.
    pub fn field_error(
        origin: Option<&Origin>,
        object: &ObjectRef,
        field: &str,
        value: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        let pos = origin.and_then(|o| o.locate(field));
        Self {
            severity: Severity::Error,
            file: origin.map(|o| o.file.to_string()),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            object: Some(object.clone()),
            field: (!field.is_empty()).then(|| field.to_string()),
            value,
            message: message.into(),
        }
    }

    /// Turns this diagnostic into a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: Kind ns/name: field: message (value "v")`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": ")?;
        }
        match self.severity {
            Severity::Error => write!(f, "error: ")?,
            Severity::Warning => write!(f, "warning: ")?,
        }
        if let Some(obj) = &self.object {
            write!(f, "{obj}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(v) = &self.value {
            write!(f, " (value {v:?})")?;
        }
        Ok(())
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}
