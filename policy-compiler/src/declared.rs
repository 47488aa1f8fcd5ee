//! Declared endpoints: Pods the manifests do not contain (an operator creates them at
//! run time: Prometheus, Strimzi brokers, CloudNativePG instances, ...), declared by
//! namespace and labels in a small YAML file (`netpol ... --endpoints FILE`), so that
//! every command judges them like Pods and `lint` knows a peer selecting them selects
//! something.
//!
//! ```yaml
//! endpoints:
//!   - namespace: monitoring
//!     name: prometheus                         # answers name it monitoring/declared/prometheus
//!     labels: {app.kubernetes.io/name: prometheus}
//!     ports: [{name: web, port: 9090}]         # optional: for named ports (protocol TCP)
//!     replicas: 2                              # optional: unknown when absent
//! ```
//!
//! A declared endpoint has no IP (no ipBlock matches it) and no ruleset of its own; with
//! `replicas` other than 1 (or absent) its traffic to itself is judged between two
//! distinct replicas, as for workloads. [`parse_declared`] is pure: text in, endpoints and
//! diagnostics (file, line, column, field path) out; unknown fields are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;

use crate::diagnostic::{Diagnostic, ObjectRef, Origin};
use crate::ports::Protocol;
use crate::validate;

/// The kind declared endpoints have in diagnostics.
pub const KIND: &str = "DeclaredEndpoint";

/// The kind segment of a declared endpoint's key: `ns/declared/name`.
pub const KEY_KIND: &str = "declared";

/// A declared container port (for named ports).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeclaredPort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Protocol (default TCP).
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// One declared endpoint, validated. (This module imports neither `load` nor `model`,
/// which both use it: no import cycle.)
#[derive(Debug, Clone)]
pub struct DeclaredEndpoint {
    /// Namespace.
    pub namespace: String,
    /// Name (the endpoint is `namespace/declared/name`).
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Container ports (for named ports).
    pub ports: Vec<DeclaredPort>,
    /// How many Pods it stands for, when known.
    pub replicas: Option<u32>,
    /// Where it was declared (`endpoints[i]` of the file).
    pub origin: Option<Origin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    endpoints: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    replicas: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    port: i64,
    #[serde(default)]
    protocol: Option<String>,
}

/// Parses and validates an endpoints file named `file`. Every problem is a diagnostic
/// with the file, position and field path (`endpoints[1].labels`); valid endpoints are
/// returned even when others are not (callers refuse to answer on any error).
pub fn parse_declared(file: &str, text: &str) -> (Vec<DeclaredEndpoint>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let docs = match crate::source::parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::file_error(file, e.pos, e.message));
            return (Vec::new(), diags);
        }
    };
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        diags.push(Diagnostic::file_error(
            file,
            None,
            "empty endpoints file: expected `endpoints:` with a list",
        ));
        return (Vec::new(), diags);
    };
    if docs.next().is_some() {
        diags.push(Diagnostic::file_error(
            file,
            None,
            "an endpoints file holds one document",
        ));
        return (Vec::new(), diags);
    }
    let spans = Arc::new(doc.spans);
    let file_ref = ObjectRef {
        kind: KIND.into(),
        namespace: String::new(),
        name: String::new(),
    };
    let whole = Origin {
        file: Arc::from(file),
        document: doc.index,
        base: String::new(),
        spans: spans.clone(),
    };
    let parsed: File = match serde_path_to_error::deserialize(&doc.value) {
        Ok(f) => f,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            diags.push(Diagnostic::field_error(
                Some(&whole),
                &file_ref,
                &path,
                None,
                e.into_inner().to_string(),
            ));
            return (Vec::new(), diags);
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, value) in parsed.endpoints.iter().enumerate() {
        // Each entry on its own, so that one typo does not hide the others' errors.
        let raw: RawEndpoint = match serde_path_to_error::deserialize(value) {
            Ok(r) => r,
            Err(e) => {
                let text = |k: &str| {
                    value
                        .get(k)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let path = e.path().to_string();
                let field = if path == "." {
                    format!("endpoints[{i}]")
                } else {
                    format!("endpoints[{i}].{path}")
                };
                diags.push(Diagnostic::field_error(
                    Some(&whole),
                    &ObjectRef {
                        kind: KIND.into(),
                        namespace: text("namespace"),
                        name: text("name"),
                    },
                    &field,
                    None,
                    e.into_inner().to_string(),
                ));
                continue;
            }
        };
        let origin = Origin {
            file: Arc::from(file),
            document: doc.index,
            base: format!("endpoints[{i}]"),
            spans: spans.clone(),
        };
        let obj = ObjectRef {
            kind: KIND.into(),
            namespace: raw.namespace.clone(),
            name: raw.name.clone(),
        };
        let before = diags.len();
        let mut err = |field: &str, value: &str, msg: String| {
            diags.push(Diagnostic::field_error(
                Some(&whole),
                &obj,
                &format!("endpoints[{i}].{field}"),
                Some(value.to_string()),
                msg,
            ));
        };
        if let Err(m) = validate::dns1123_label(&raw.namespace) {
            err("namespace", &raw.namespace, m);
        }
        if let Err(m) = validate::dns1123_subdomain(&raw.name) {
            err("name", &raw.name, m);
        }
        for (k, v) in &raw.labels {
            if let Err(m) = validate::label_key(k) {
                err(&format!("labels.{k}"), k, m);
            }
            if let Err(m) = validate::label_value(v) {
                err(&format!("labels.{k}"), v, m);
            }
        }
        let mut ports = Vec::new();
        for (j, p) in raw.ports.iter().enumerate() {
            let field = format!("ports[{j}]");
            let protocol = match p.protocol.as_deref().map(str::parse::<Protocol>) {
                None => Protocol::Tcp,
                Some(Ok(pr)) => pr,
                Some(Err(m)) => {
                    err(
                        &format!("{field}.protocol"),
                        p.protocol.as_deref().unwrap_or(""),
                        m,
                    );
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.port) else {
                err(
                    &format!("{field}.port"),
                    &p.port.to_string(),
                    "must be between 1 and 65535, inclusive".into(),
                );
                continue;
            };
            if port == 0 {
                err(
                    &format!("{field}.port"),
                    "0",
                    "must be between 1 and 65535, inclusive".into(),
                );
                continue;
            }
            if let Some(n) = &p.name
                && let Err(m) = validate::iana_svc_name(n)
            {
                err(&format!("{field}.name"), n, m);
                continue;
            }
            ports.push(DeclaredPort {
                name: p.name.clone(),
                protocol,
                port,
            });
        }
        if !seen.insert((raw.namespace.clone(), raw.name.clone())) {
            err(
                "name",
                &raw.name,
                format!(
                    "duplicate endpoint {}/{KEY_KIND}/{}: names must be unique per namespace",
                    raw.namespace, raw.name
                ),
            );
        }
        if diags.len() > before {
            continue;
        }
        ports.sort();
        ports.dedup();
        out.push(DeclaredEndpoint {
            namespace: raw.namespace,
            name: raw.name,
            labels: raw.labels,
            ports,
            replicas: raw.replicas,
            origin: Some(origin),
        });
    }
    (out, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_file() {
        let text = "endpoints:\n  - namespace: monitoring\n    name: prometheus\n    labels: {app: prometheus}\n    ports: [{name: web, port: 9090}]\n    replicas: 2\n";
        let (eps, diags) = parse_declared("e.yaml", text);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(eps.len(), 1);
        let e = &eps[0];
        assert_eq!(e.namespace, "monitoring");
        assert_eq!(e.labels.get("app").map(String::as_str), Some("prometheus"));
        assert_eq!(e.ports[0].protocol, Protocol::Tcp);
        assert_eq!(e.replicas, Some(2));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "endpoints:\n  - namespace: monitoring\n    name: p\n    labels: {\"bad key!\": x}\n    ports: [{port: 70000}]\n  - namespace: monitoring\n    name: p\n";
        let (eps, diags) = parse_declared("e.yaml", text);
        assert!(eps.is_empty(), "{eps:?}");
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|d| d.starts_with("e.yaml:4:") && d.contains("endpoints[0].labels")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|d| d.starts_with("e.yaml:5:") && d.contains("endpoints[0].ports[0].port")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|d| d.contains("duplicate endpoint")),
            "{shown:?}"
        );
    }

    #[test]
    fn unknown_fields_and_garbage_are_errors_not_panics() {
        for text in [
            "",
            "endpoints: 3",
            "endpoints:\n  - namespace: a\n    name: b\n    lables: {}\n",
            "[1, 2",
            "a: 1\n---\nb: 2\n",
            "endpoints:\n  - {namespace: a, name: b, replicas: -1}\n",
        ] {
            let (eps, diags) = parse_declared("e.yaml", text);
            assert!(eps.is_empty(), "{text:?}");
            assert!(diags.iter().any(Diagnostic::is_error), "{text:?}");
        }
        let (_, d) = parse_declared(
            "e.yaml",
            "endpoints:\n  - namespace: a\n    name: b\n    lables: {}\n",
        );
        let s = d[0].to_string();
        assert!(s.starts_with("e.yaml:") && s.contains("lables"), "{s}");
    }
}
