//! Expectations of a golden case (`expect.yaml`) and checking them against a model.
//!
//! ```yaml
//! description: what the case pins
//! assertions:
//!   - {from: x/a, to: y/b, port: 80, protocol: TCP, allowed: false}
//!   # through a Service (port = the Service port): all backends, or one
//!   - {from: x/a, to: x/service/db, port: 5432, allowed: true}
//!   - {from: node/n1, to: x/b, port: 80, allowed: true}
//!   - {from: x/a, to: x/service/db, port: 5432, backend: x/db-1, allowed: false}
//!   # with audit policies (docs/audit.md): the audited verdict too
//!   - {from: x/a, to: y/b, port: 80, allowed: true, audited: false}
//! matrix:
//!   - port: 80
//!     protocol: TCP
//!     grid: |
//!       -   x/a x/b
//!       x/a .   X
//!       x/b .   .
//! ```
//! Grid tokens are whitespace separated; `.` allowed, `X` denied; rows are sources. With
//! audit policies, `A` is allowed but audited denied (would drop (audit)) and `a` denied
//! but audited allowed; `.` and `X` assert the enforced verdict only.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::explain::{
    Destination, PortQuery, explain, explain_service, parse_destination, parse_source,
};
use crate::graph::{AllowGraph, Subject};
use crate::matrix::{MatrixQuery, matrix};
use crate::model::Model;
use crate::ports::Protocol;

/// A parsed `expect.yaml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// What the case pins.
    #[serde(default)]
    pub description: Option<String>,
    /// Point checks.
    #[serde(default)]
    pub assertions: Vec<Assertion>,
    /// Full truth tables.
    #[serde(default)]
    pub matrix: Vec<MatrixExpectation>,
}

/// One point check.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// Source endpoint, IP or `node/NAME`.
    pub from: String,
    /// Destination endpoint, IP or Service `ns/service/name`.
    pub to: String,
    /// Port (the Service port for a Service destination).
    pub port: u16,
    /// For a Service destination: the one backend (`ns/name`) whose verdict is asserted.
    /// Without it, `allowed: true` means every backend is allowed (and there is one),
    /// `allowed: false` that not every backend is.
    #[serde(default)]
    pub backend: Option<String>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Expected verdict.
    pub allowed: bool,
    /// Expected audited verdict: every `netpol.io/mode: audit` policy enforced (without
    /// audit policies it is the enforced one). Unchecked when absent. See docs/audit.md.
    #[serde(default)]
    pub audited: Option<bool>,
}

/// One expected truth table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MatrixExpectation {
    /// Port.
    pub port: u16,
    /// Protocol (default TCP).
    #[serde(default)]
    pub protocol: Option<String>,
    /// The grid.
    pub grid: String,
}

/// One failed expectation, with a readable report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which expectation (`assertion 3`, `matrix TCP/80`).
    pub what: String,
    /// Diff and explanations.
    pub report: String,
}

/// Parses `expect.yaml`; errors read `expect.yaml:LINE:COL: message`.
pub fn parse_expectations(text: &str) -> Result<Expectations, String> {
    parse_expectations_in("expect.yaml", text)
}

/// Parses an expectations file named `file` in errors (`FILE:LINE:COL: message`, no
/// source snippet, no parser-library hints).
pub fn parse_expectations_in(file: &str, text: &str) -> Result<Expectations, String> {
    serde_saphyr::from_str(text).map_err(|e| {
        let (msg, pos) = crate::source::yaml_error(&e);
        match pos {
            Some(p) => format!("{file}:{}:{}: {msg}", p.line, p.column),
            None => format!("{file}: {msg}"),
        }
    })
}

fn protocol(p: &Option<String>) -> Result<Protocol, String> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => s.parse(),
    }
}

/// Checks every expectation; returns the failures (empty when all hold).
pub fn check(model: &Model, graph: &AllowGraph, exp: &Expectations) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (i, a) in exp.assertions.iter().enumerate() {
        let what = format!(
            "assertion {i}: {} -> {} {} {}",
            a.from,
            a.to,
            a.protocol.as_deref().unwrap_or("TCP"),
            a.port
        );
        let resolved = (|| {
            Ok::<_, String>((
                parse_source(model, &a.from)?,
                parse_destination(model, &a.to)?,
                protocol(&a.protocol)?,
            ))
        })();
        let (s, d, p) = match resolved {
            Ok(v) => v,
            Err(e) => {
                failures.push(Failure {
                    what,
                    report: format!("invalid assertion: {e}"),
                });
                continue;
            }
        };
        let d = match (d, &a.backend) {
            (Destination::Subject(d), None) => d,
            (Destination::Subject(_), Some(_)) => {
                failures.push(Failure {
                    what,
                    report: "invalid assertion: `backend` needs a Service destination".into(),
                });
                continue;
            }
            (Destination::Service(svc), _) => {
                if let Some(f) = check_service(model, graph, s, svc, p, a, a.allowed) {
                    failures.push(Failure {
                        what: what.clone(),
                        report: f,
                    });
                }
                if let Some(want) = a.audited {
                    let (m, g) = match graph.audit() {
                        Some(v) => (&v.model, &v.graph),
                        None => (model, graph),
                    };
                    // The same Service in the audited model (only policies differ).
                    let svc = m
                        .services
                        .iter()
                        .find(|x| x.key() == svc.key())
                        .unwrap_or(svc);
                    if let Some(f) = check_service(m, g, s, svc, p, a, want) {
                        failures.push(Failure {
                            what: format!("{what} (audited)"),
                            report: f,
                        });
                    }
                }
                continue;
            }
        };
        let query = Some(PortQuery {
            protocol: p,
            port: a.port,
        });
        let e = explain(model, graph, s, d, query);
        if e.allowed != a.allowed {
            failures.push(Failure {
                what: what.clone(),
                report: format!(
                    "expected {}, got {}\n{e}",
                    verdict(a.allowed),
                    verdict(e.allowed)
                ),
            });
        }
        if let Some(want) = a.audited {
            // The audited model has the same endpoints: the subjects mean the same.
            let audited = match graph.audit() {
                Some(v) => explain(&v.model, &v.graph, s, d, query),
                None => e,
            };
            if audited.allowed != want {
                failures.push(Failure {
                    what: format!("{what} (audited)"),
                    report: format!(
                        "expected audited {}, got {}\n{audited}",
                        verdict(want),
                        verdict(audited.allowed)
                    ),
                });
            }
        }
    }
    for m in &exp.matrix {
        let p = match protocol(&m.protocol) {
            Ok(p) => p,
            Err(e) => {
                failures.push(Failure {
                    what: format!("matrix {}", m.port),
                    report: e,
                });
                continue;
            }
        };
        if let Some(f) = check_matrix(model, graph, p, m) {
            failures.push(f);
        }
    }
    failures
}

/// A Service assertion: `None` when it holds, else the report.
fn check_service(
    model: &Model,
    graph: &AllowGraph,
    src: Subject,
    svc: &crate::model::Service,
    p: Protocol,
    a: &Assertion,
    want: bool,
) -> Option<String> {
    let backend = a.backend.as_deref();
    let ports: Vec<usize> = svc
        .find_ports(&a.port.to_string())
        .into_iter()
        .filter(|i| svc.ports[*i].protocol == p)
        .collect();
    if ports.is_empty() {
        return Some(format!(
            "invalid assertion: Service {} has no {p} port {}",
            svc.key(),
            a.port
        ));
    }
    let e = explain_service(model, graph, src, svc, &ports);
    let got = match backend {
        None => e.allowed,
        Some(b) => {
            let name = match Subject::parse(model, b) {
                Ok(s) => s.display(model),
                Err(err) => return Some(format!("invalid assertion: backend: {err}")),
            };
            match e.backends.iter().find(|x| x.backend == name) {
                Some(x) => x.allowed,
                None => {
                    return Some(format!(
                        "invalid assertion: {name} is not a backend of {} on {p} {}\n{e}",
                        svc.key(),
                        a.port
                    ));
                }
            }
        }
    };
    (got != want).then(|| format!("expected {}, got {}\n{e}", verdict(want), verdict(got)))
}

fn verdict(b: bool) -> &'static str {
    if b { "allowed" } else { "denied" }
}

fn check_matrix(
    model: &Model,
    graph: &AllowGraph,
    p: Protocol,
    m: &MatrixExpectation,
) -> Option<Failure> {
    let what = format!("matrix {p}/{}", m.port);
    let rows: Vec<Vec<&str>> = m
        .grid
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| !r.is_empty())
        .collect();
    let Some((header, body)) = rows.split_first() else {
        return Some(Failure {
            what,
            report: "empty grid".into(),
        });
    };
    let cols: Vec<&str> = header.iter().skip(1).copied().collect();
    let actual = matrix(
        model,
        graph,
        MatrixQuery {
            protocol: Some(p),
            port: Some(m.port),
        },
    );
    let mut report = String::new();
    let expected_rows: Vec<&str> = body.iter().filter_map(|r| r.first().copied()).collect();
    if cols != actual.endpoints || expected_rows != actual.endpoints {
        let _ = writeln!(
            report,
            "endpoints differ:\n  expected columns {cols:?}\n  expected rows    {expected_rows:?}\n  actual           {:?}",
            actual.endpoints
        );
    }
    // The audited matrix, only when a cell asks for it (`A`/`a`).
    let wants_audit = body
        .iter()
        .any(|r| r.iter().skip(1).any(|c| matches!(*c, "A" | "a")));
    let audited = wants_audit.then(|| match graph.audit() {
        Some(v) => matrix(
            &v.model,
            &v.graph,
            MatrixQuery {
                protocol: Some(p),
                port: Some(m.port),
            },
        ),
        None => actual.clone(),
    });
    let mut diffs = Vec::new();
    let mut audit_diffs = Vec::new();
    for row in body {
        let Some((src, cells)) = row.split_first() else {
            continue;
        };
        let Some(si) = actual.endpoints.iter().position(|e| e == src) else {
            continue;
        };
        for (dst, cell) in cols.iter().zip(cells) {
            let Some(di) = actual.endpoints.iter().position(|e| e == dst) else {
                continue;
            };
            let (want, want_audited) = match *cell {
                "." => (true, None),
                "X" | "x" => (false, None),
                "A" => (true, Some(false)),
                "a" => (false, Some(true)),
                other => {
                    let _ = writeln!(report, "bad cell {other:?} at {src} -> {dst}");
                    continue;
                }
            };
            if actual.allowed[si][di] != want {
                diffs.push((si, di, want));
            }
            if let (Some(w), Some(au)) = (want_audited, &audited)
                && au.allowed[si][di] != w
            {
                audit_diffs.push((si, di, w));
            }
        }
    }
    if diffs.is_empty() && audit_diffs.is_empty() && report.is_empty() {
        return None;
    }
    if !audit_diffs.is_empty() {
        let _ = writeln!(
            report,
            "{} audited cell(s) differ (expected -> actual, audit policies enforced):",
            audit_diffs.len()
        );
        for (si, di, want) in audit_diffs.iter().take(12) {
            let _ = writeln!(
                report,
                "  {} -> {}: expected audited {}, got {}",
                actual.endpoints[*si],
                actual.endpoints[*di],
                verdict(*want),
                verdict(!*want)
            );
        }
    }
    if !diffs.is_empty() {
        let _ = writeln!(
            report,
            "{} cell(s) differ (expected -> actual):",
            diffs.len()
        );
    }
    for (si, di, want) in diffs.iter().take(12) {
        let s = model.endpoint(model.endpoints[*si].id);
        let d = model.endpoint(model.endpoints[*di].id);
        let _ = writeln!(
            report,
            "  {} -> {}: expected {}, got {}",
            s.key(),
            d.key(),
            verdict(*want),
            verdict(!*want)
        );
        let e = explain(
            model,
            graph,
            Subject::Endpoint(s.id),
            Subject::Endpoint(d.id),
            Some(PortQuery {
                protocol: p,
                port: m.port,
            }),
        );
        for line in e.to_string().lines() {
            let _ = writeln!(report, "    {line}");
        }
    }
    if diffs.len() > 12 {
        let _ = writeln!(report, "  ... and {} more", diffs.len() - 12);
    }
    let _ = writeln!(report, "actual:\n{}", actual.to_text());
    Some(Failure { what, report })
}
