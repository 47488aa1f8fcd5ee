//! `netpol test`: the results (checks, cases, suites), as text, JSON and, through
//! [`super::junit`], JUnit XML.

use std::fmt::Write as _;

use serde::Serialize;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Holds.
    Passed,
    /// Does not hold.
    Failed,
    /// A golden file was written by `--update`.
    Updated,
}

/// One check of a case: its manifests, its expectations or one golden file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// `manifests`, `expect`, or a golden kind name.
    pub(crate) kind: &'static str,
    /// What was checked (`assertion 0: x/a -> y/b TCP 80`, `matrix-tcp-80.txt`).
    pub(crate) what: String,
    /// Outcome.
    pub(crate) status: Status,
    /// Explanation or diff; empty when passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) report: String,
}

/// The result of one case directory.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseReport {
    /// Path relative to the DIR it was found under (`.` for DIR itself).
    pub(crate) name: String,
    /// Path of the case directory, as found under DIR.
    pub(crate) path: String,
    /// Whether every check passed (updated goldens count as passed).
    pub(crate) passed: bool,
    /// Every check, in order.
    pub(crate) checks: Vec<Check>,
    /// Compiler warnings (they do not fail the case).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

/// The cases found under one DIR.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Suite {
    /// DIR as given.
    pub(crate) dir: String,
    /// Its cases, sorted by path.
    pub(crate) cases: Vec<CaseReport>,
}

#[derive(Serialize)]
pub(super) struct JsonReport<'a> {
    pub(super) suites: &'a [Suite],
    pub(super) passed: usize,
    pub(super) failed: usize,
}

pub(super) fn failed(
    kind: &'static str,
    what: impl Into<String>,
    report: impl Into<String>,
) -> Check {
    Check {
        kind,
        what: what.into(),
        status: Status::Failed,
        report: report.into(),
    }
}

pub(super) fn passed(kind: &'static str, what: impl Into<String>) -> Check {
    Check {
        kind,
        what: what.into(),
        status: Status::Passed,
        report: String::new(),
    }
}

fn indent(out: &mut String, text: &str, by: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{by}{line}");
        }
    }
}

/// The human readable report of one case.
pub(super) fn text_report(c: &CaseReport) -> String {
    let mut s = String::new();
    let status = if c.passed { "ok  " } else { "FAIL" };
    let _ = writeln!(s, "{status} {}", c.path);
    for w in &c.warnings {
        let _ = writeln!(s, "  {w}");
    }
    for k in &c.checks {
        match k.status {
            Status::Passed => {}
            Status::Updated => {
                let _ = writeln!(s, "  updated {} ({})", k.what, k.report);
            }
            Status::Failed => {
                let _ = writeln!(s, "  {}", k.what);
                indent(&mut s, &k.report, "    ");
            }
        }
    }
    s
}
